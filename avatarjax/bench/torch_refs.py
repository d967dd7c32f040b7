"""Plain-PyTorch references for the side-by-side training benchmarks, written the way the released code writes
them (``nn.Conv1d`` / ``nn.MultiheadAttention`` / ``nn.BatchNorm1d``, eager, channels-first convolutions).

Only architectures without a maintained PyTorch implementation live here; the others come from diffusers
(Wan DiT, Wan VAE), transformers (Qwen2, CLIP, BERT, wav2vec2, UMT5) or :mod:`avatarjax.codecs.dac_torch_reference`.
Weights are random: these are timing references at the same shapes and FLOPs, not parity references.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal(length: int, dim: int) -> torch.Tensor:
    """``[length, dim]`` absolute positions (sin on the first half, cos on the second)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x):
        return self.net(x)


class ConvModule(nn.Module):
    """LN, pointwise Conv1d to 2C, GLU, depthwise Conv1d (groups=C), BatchNorm1d, SiLU, pointwise Conv1d, dropout
    (torchaudio's ``_ConvolutionModule``)."""

    def __init__(self, dim: int, kernel_size: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.seq = nn.Sequential(nn.Conv1d(dim, 2 * dim, 1), nn.GLU(dim=1),
                                 nn.Conv1d(dim, dim, kernel_size, padding=(kernel_size - 1) // 2, groups=dim),
                                 nn.BatchNorm1d(dim), nn.SiLU(), nn.Conv1d(dim, dim, 1), nn.Dropout(dropout))

    def forward(self, x):
        return self.seq(self.norm(x).transpose(1, 2)).transpose(1, 2)


class ConformerLayer(nn.Module):
    """FFN/2 -> MHSA -> conv module -> FFN/2 -> LN, all residual (torchaudio ``ConformerLayer``)."""

    def __init__(self, dim: int, heads: int, ffn: int, kernel_size: int, dropout: float):
        super().__init__()
        self.ffn1 = FeedForward(dim, ffn, dropout)
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.attn_dropout = nn.Dropout(dropout)
        self.conv = ConvModule(dim, kernel_size, dropout)
        self.ffn2 = FeedForward(dim, ffn, dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, padding_mask):
        x = x + 0.5 * self.ffn1(x)
        h = self.attn_norm(x)
        h, _ = self.attn(h, h, h, key_padding_mask=padding_mask, need_weights=False)
        x = x + self.attn_dropout(h)
        x = x + self.conv(x)
        x = x + 0.5 * self.ffn2(x)
        return self.norm(x)


class Conformer(nn.Module):
    """Input projection, sinusoidal positions, ``layers`` Conformer layers: ``[b, T, in_dim]`` -> ``[b, T, dim]``;
    ``mask`` ``[b, T]`` True = valid."""

    def __init__(self, in_dim: int, dim: int, layers: int, heads: int, ffn: int, kernel_size: int,
                 dropout: float = 0.1):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.layers = nn.ModuleList([ConformerLayer(dim, heads, ffn, kernel_size, dropout) for _ in range(layers)])
        self.dim = dim

    def forward(self, x, mask):
        h = self.proj(x) + sinusoidal(x.shape[1], self.dim)
        for layer in self.layers:
            h = layer(h, ~mask)
        return h


class PosNet(nn.Module):
    """The released PFLPosNet: two unpadded Conv1d + ReLU, mean over time, concat the previous last pose, three
    Linear layers to ``segment * pose_dim``."""

    def __init__(self, pose_dim: int, segment: int, hidden: int, kernel_size: int = 3):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv1d(pose_dim, hidden, kernel_size), nn.ReLU(),
                                     nn.Conv1d(hidden, hidden, kernel_size), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(pose_dim + hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                     nn.ReLU(), nn.Linear(hidden, segment * pose_dim))
        self.segment, self.pose_dim = segment, pose_dim

    def forward(self, previous_last, pose):
        code = self.encoder(pose.transpose(1, 2)).mean(dim=2)
        out = self.decoder(torch.cat([previous_last, code], dim=-1))
        return out.view(-1, self.segment, self.pose_dim)


class MotionVAE(nn.Module):
    """The InstructAvatar (GAIA-style) motion VAE as the release builds it from Stable Diffusion's autoencoder
    parts: diffusers' ``Encoder`` for appearance and (with extra downsamples) for motion, ``Decoder`` on the
    appearance latent concatenated with the nearest-upsampled motion latent. NCHW."""

    def __init__(self, channels: int, channel_mult, num_res_blocks: int, latent_channels: int,
                 motion_extra_down: int, groups: int, mid_attention: bool = True):
        super().__init__()
        from diffusers.models.autoencoders.vae import Decoder, Encoder

        widths = [channels * m for m in channel_mult]
        motion_widths = widths + [widths[-1]] * motion_extra_down
        groups = math.gcd(groups, *widths)
        kw = dict(layers_per_block=num_res_blocks, norm_num_groups=groups, act_fn="silu",
                  mid_block_add_attention=mid_attention)
        self.appearance = Encoder(3, latent_channels, ("DownEncoderBlock2D",) * len(widths), tuple(widths),
                                  double_z=True, **kw)
        self.motion = Encoder(3, latent_channels, ("DownEncoderBlock2D",) * len(motion_widths),
                              tuple(motion_widths), double_z=True, **kw)
        self.decoder = Decoder(2 * latent_channels, 3, ("UpDecoderBlock2D",) * len(widths), tuple(widths), **kw)
        self.factor = 2 ** motion_extra_down

    def forward(self, appearance_frames, motion_frames):
        """-> (reconstruction, appearance (mean, logvar), motion (mean, logvar))."""
        a_mean, a_logvar = self.appearance(appearance_frames).chunk(2, dim=1)
        m_mean, m_logvar = self.motion(motion_frames).chunk(2, dim=1)
        a_logvar, m_logvar = a_logvar.clamp(-30.0, 20.0), m_logvar.clamp(-30.0, 20.0)
        a = a_mean + torch.exp(0.5 * a_logvar) * torch.randn_like(a_mean)
        m = m_mean + torch.exp(0.5 * m_logvar) * torch.randn_like(m_mean)
        m = nn.functional.interpolate(m, scale_factor=self.factor, mode="nearest")
        return self.decoder(torch.cat([a, m], dim=1)), (a_mean, a_logvar), (m_mean, m_logvar)


def kl(mean, logvar):
    """KL to N(0, 1) summed over all but the batch dim: ``[N]``."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv3x3, GroupNorm, SiLU, conv3x3 plus a (1x1-projected) skip (SD's ResnetBlock2D)."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(groups, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                  nn.GroupNorm(groups, cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.body(x)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after a (0, 1, 0, 1) pad (SD / taming)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        return self.conv(nn.functional.pad(x, (0, 1, 0, 1)))


class FaceReader(nn.Module):
    """The synthface face reader in plain torch: PixelUnshuffle, conv stem, ResBlock stages (stride-2 downsample
    between stages), GroupNorm + SiLU, flatten, Linear; the identity embedding joins before a joint Linear and the
    keypoint and state heads. NCHW frames -> (keypoints ``[N, K, 2]``, state ``[N, S]``)."""

    def __init__(self, image_size: int, patch: int, stem: int, channels, blocks: int, hidden: int,
                 identity_in: int, identity_dim: int, joint: int, groups: int, keypoints: int, state: int):
        super().__init__()
        layers, ch = [nn.PixelUnshuffle(patch), nn.Conv2d(3 * patch * patch, stem, 3, padding=1)], stem
        for i, out in enumerate(channels):
            if i:
                layers.append(Downsample(ch))
            for _ in range(blocks):
                layers.append(ResBlock(ch, out, groups))
                ch = out
        side = image_size // patch // 2 ** (len(channels) - 1)
        layers += [nn.GroupNorm(groups, ch), nn.SiLU(), nn.Flatten(), nn.Linear(side * side * ch, hidden), nn.SiLU()]
        self.trunk = nn.Sequential(*layers)
        self.identity = nn.Sequential(nn.Linear(identity_in, identity_dim), nn.SiLU())
        self.joint = nn.Sequential(nn.Linear(hidden + identity_dim, joint), nn.SiLU())
        self.keypoints, self.state = nn.Linear(joint, keypoints * 2), nn.Linear(joint, state)

    def forward(self, x, identity):
        h = self.joint(torch.cat([self.trunk(x), self.identity(identity)], dim=-1))
        return self.keypoints(h).view(x.shape[0], -1, 2), self.state(h)
