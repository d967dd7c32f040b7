"""Parity: TiTok (bytedance/1d-tokenizer) checkpoints converted into the video tokenizer.

The reference is a plain-torch re-implementation of TiTok's ``TiTokEncoder`` / ``TiTokDecoder`` forward
(``modeling/modules/blocks.py``: class token, positional embeddings, latent tokens appended after the patch tokens,
``ln_pre``, ``ResidualAttentionBlock`` with ``nn.MultiheadAttention`` over [L, N, D], ``ln_post``, ``conv_out``;
legacy and pixel decoder heads) with the same parameter names, tiny random weights, saved as TiTok saves them.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from avatarjax.checkpoint.convert import convert_command, load_converted  # noqa: E402
from avatarjax.codecs import titok_convert  # noqa: E402
from avatarjax.errors import CheckpointError  # noqa: E402

IMAGE, PATCH, K, TOKEN = 32, 8, 4, 4
ENC_W, DEC_W, LAYERS = 128, 192, 2  # 2 and 3 heads of 64 (TiTok's head width)
TOL = 1e-4


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, d // 64)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d, 4 * d)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(4 * d, d))]))

    def forward(self, x):  # [L, N, D]
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


def _trunk(module, x):
    x = module.ln_pre(x).permute(1, 0, 2)
    for block in module.transformer:
        x = block(x)
    return x.permute(1, 0, 2)


class Encoder(nn.Module):
    def __init__(self, out_channels: int, legacy: bool):
        super().__init__()
        w, g = ENC_W, IMAGE // PATCH
        self.legacy = legacy
        self.patch_embed = nn.Conv2d(3, w, PATCH, stride=PATCH)
        self.class_embedding = nn.Parameter(torch.randn(1, w) * w ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn(g * g + 1, w) * w ** -0.5)
        self.latent_token_positional_embedding = nn.Parameter(torch.randn(K, w) * w ** -0.5)
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = nn.ModuleList([Block(w) for _ in range(LAYERS)])
        self.ln_post = nn.LayerNorm(w)
        self.conv_out = nn.Conv2d(w, out_channels, 1)

    def forward(self, pixels, latent_tokens):  # pixels [N, 3, S, S] in [0, 1]
        n = pixels.shape[0]
        x = self.patch_embed(pixels).flatten(2).permute(0, 2, 1)
        x = torch.cat([self.class_embedding.expand(n, -1, -1), x], dim=1) + self.positional_embedding
        lat = latent_tokens.expand(n, -1, -1) + self.latent_token_positional_embedding
        x = _trunk(self, torch.cat([x, lat], dim=1))
        lat = self.ln_post(x[:, -K:])
        if self.legacy:
            lat = lat.reshape(n, ENC_W, K, 1)
        else:
            lat = lat.reshape(n, K, ENC_W, 1).permute(0, 2, 1, 3)
        return self.conv_out(lat).reshape(n, -1, 1, K)


class Decoder(nn.Module):
    def __init__(self, legacy: bool):
        super().__init__()
        w, g = DEC_W, IMAGE // PATCH
        self.legacy, self.grid = legacy, g
        self.decoder_embed = nn.Linear(TOKEN, w)
        self.class_embedding = nn.Parameter(torch.randn(1, w) * w ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn(g * g + 1, w) * w ** -0.5)
        self.mask_token = nn.Parameter(torch.randn(1, 1, w) * w ** -0.5)
        self.latent_token_positional_embedding = nn.Parameter(torch.randn(K, w) * w ** -0.5)
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = nn.ModuleList([Block(w) for _ in range(LAYERS)])
        self.ln_post = nn.LayerNorm(w)
        if legacy:
            self.ffn = nn.Sequential(nn.Conv2d(w, 2 * w, 1), nn.Tanh(), nn.Conv2d(2 * w, 1024, 1))
        else:
            self.ffn = nn.Sequential(nn.Conv2d(w, PATCH * PATCH * 3, 1))
            self.conv_out = nn.Conv2d(3, 3, 3, padding=1)

    def features(self, z):  # z [N, C, 1, K] -> ln_post patch features [N, P, W]
        n = z.shape[0]
        x = self.decoder_embed(z.reshape(n, TOKEN, K).permute(0, 2, 1)) + self.latent_token_positional_embedding
        masks = self.mask_token.repeat(n, self.grid ** 2, 1)
        masks = torch.cat([self.class_embedding.expand(n, -1, -1), masks], dim=1) + self.positional_embedding
        x = _trunk(self, torch.cat([masks, x], dim=1))
        return self.ln_post(x[:, 1:1 + self.grid ** 2])

    def forward(self, z):  # pixel head: [N, 3, S, S] in [0, 1]
        n, g, p = z.shape[0], self.grid, PATCH
        x = self.ffn(self.features(z).permute(0, 2, 1).reshape(n, DEC_W, g, g))
        # Rearrange 'b (p1 p2 c) h w -> b c (h p1) (w p2)'
        x = x.reshape(n, p, p, 3, g, g).permute(0, 3, 4, 1, 5, 2).reshape(n, 3, g * p, g * p)
        return self.conv_out(x)


class TiTok(nn.Module):
    def __init__(self, vae: bool, legacy: bool):
        super().__init__()
        self.encoder = Encoder(2 * TOKEN if vae else TOKEN, legacy)
        self.decoder = Decoder(legacy)
        self.latent_tokens = nn.Parameter(torch.randn(K, ENC_W) * ENC_W ** -0.5)


def _reference(vae: bool, legacy: bool) -> TiTok:
    torch.manual_seed(0 if vae else 1)
    model = TiTok(vae, legacy).eval()
    with torch.no_grad():  # non-trivial norms so that every LayerNorm mapping is exercised
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.add_(0.2 * torch.randn_like(m.weight))
                m.bias.add_(0.1 * torch.randn_like(m.bias))
    return model


def _frames(b: int, t: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (b, t, IMAGE, IMAGE, 3)).astype(np.float32)


def _to_torch01(frames: np.ndarray):
    """Our [-1, 1] channels-last frames as TiTok's [0, 1] NCHW images, one per frame."""
    flat = frames.reshape((-1,) + frames.shape[2:])
    return torch.from_numpy((flat + 1) / 2).permute(0, 3, 1, 2).contiguous()


def test_vae_pixel_decoder_matches_titok(tmp_path):
    """A non-legacy VAE TiTok saved as a hub directory: posterior (mean, logvar) of every frame of a clip (the
    temporal stage is the identity at conversion) and pixel decode, through the CLI converter."""
    from safetensors.torch import save_file

    ref = _reference(vae=True, legacy=False)
    src = tmp_path / "titok_vae"
    src.mkdir()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"model": {"vq_model": {
        "quantize_mode": "vae", "is_legacy": False, "token_size": TOKEN, "num_latent_tokens": K,
        "temporal_layers": 1}},
        "dataset": {"preprocessing": {"crop_size": IMAGE}}}))
    result = convert_command("titok", ["--from", str(src), "--to", str(tmp_path / "out")])
    model, cfg, name = load_converted(result["to"])
    assert name == "titok" and cfg.regularizer == "kl" and cfg.temporal_layers == 1  # set in config.json
    assert (cfg.dim, cfg.dec_dim, cfg.num_heads, cfg.dec_heads) == (ENC_W, DEC_W, 2, 3)

    frames = _frames(2, 3)
    with torch.no_grad():
        z = ref.encoder(_to_torch01(frames), ref.latent_tokens)  # [N, 2C, 1, K]
        mean_t, logvar_t = torch.chunk(z, 2, dim=1)
        logvar_t = logvar_t.clamp(-30.0, 20.0)
    mean, logvar = model.posterior(frames)
    to_ours = lambda a: a.reshape(2, 3, TOKEN, K).permute(0, 1, 3, 2).numpy()  # noqa: E731
    np.testing.assert_allclose(np.asarray(mean), to_ours(mean_t), atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(logvar), to_ours(logvar_t), atol=TOL, rtol=0)

    latents = np.random.default_rng(1).standard_normal((2, 3, K, TOKEN)).astype(np.float32)
    with torch.no_grad():
        z_in = torch.from_numpy(latents.reshape(6, K, TOKEN)).permute(0, 2, 1).reshape(6, TOKEN, 1, K)
        pixels = ref.decoder(z_in).permute(0, 2, 3, 1).numpy().reshape(2, 3, IMAGE, IMAGE, 3)
    np.testing.assert_allclose(np.asarray(model.decode(latents)), 2 * pixels - 1, atol=TOL, rtol=0)


def test_legacy_vq_encoder_and_decoder_trunk_match_titok(tmp_path):
    """A legacy VQ TiTok state dict file (as the released tokenizer_titok_*.bin): the continuous pre-quantisation
    latents (with the legacy reshape) and the decoder trunk's features match; the VQGAN head is not converted."""
    ref = _reference(vae=False, legacy=True)
    state = dict(ref.state_dict())
    state["quantize.embedding.weight"] = torch.randn(16, TOKEN)  # ignored: we keep pre-quantisation latents
    path = tmp_path / "tokenizer_titok_tiny.bin"
    torch.save(state, path)
    raw, tensors = titok_convert.read_titok_checkpoint(path)
    cfg = titok_convert.config_from_titok(raw)
    assert cfg.legacy_token_layout and not cfg.pixel_conv and cfg.regularizer == "noise"
    assert cfg.temporal_layers == titok_convert.TEMPORAL_LAYERS  # no config beside the file: the default
    assert any("to_pixels is fresh" in note for note in titok_convert.not_converted(cfg))
    from avatarjax.checkpoint.convert import from_pretrained

    model, _ = from_pretrained(titok_convert.CONVERTER, path)

    frames = _frames(1, 2)
    with torch.no_grad():
        z = ref.encoder(_to_torch01(frames), ref.latent_tokens)  # [N, C, 1, K]
    np.testing.assert_allclose(np.asarray(model.encode(frames)),
                               z.reshape(1, 2, TOKEN, K).permute(0, 1, 3, 2).numpy(), atol=TOL, rtol=0)

    latents = np.random.default_rng(2).standard_normal((2, K, TOKEN)).astype(np.float32)
    with torch.no_grad():
        feats = ref.decoder.features(torch.from_numpy(latents).permute(0, 2, 1).reshape(2, TOKEN, 1, K))
    np.testing.assert_allclose(np.asarray(model.decoder.features(latents)), feats.numpy(), atol=TOL, rtol=0)


def test_temporal_stage_trains_from_identity_and_stays_causal(tmp_path):
    """The converted temporal blocks are the identity only through their zeroed output projections: once those
    move, the latents change, and a frame's latents still never depend on later frames."""
    from safetensors.torch import save_file

    from avatarjax.checkpoint.convert import from_pretrained

    ref = _reference(vae=True, legacy=False)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "model.safetensors"))
    model, _ = from_pretrained(titok_convert.CONVERTER, tmp_path)
    frames = _frames(1, 3)
    before = np.asarray(model.encode(frames))
    o_proj = model.temporal.layers.attn.o_proj.kernel
    o_proj.set_value(o_proj.get_value() + 0.05)
    after = np.asarray(model.encode(frames))
    assert np.abs(after - before).max() > 1e-3
    changed = frames.copy()
    changed[:, 2] = -changed[:, 2]
    later = np.asarray(model.encode(changed))
    np.testing.assert_allclose(later[:, :2], after[:, :2], atol=1e-6, rtol=0)
    assert np.abs(later[:, 2] - after[:, 2]).max() > 1e-3


def test_bad_sources_fail_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="holds none of"):
        titok_convert.read_titok_checkpoint(tmp_path)
    ref = _reference(vae=True, legacy=False)
    state = dict(ref.state_dict())
    state["decoder.text_guidance_proj.weight"] = torch.zeros(DEC_W, 8)
    torch.save(state, tmp_path / "tatitok.bin")
    with pytest.raises(CheckpointError, match="TA-TiTok"):
        titok_convert.read_titok_checkpoint(tmp_path / "tatitok.bin")
