"""PosNet (PFLPosNet): an online head-pose corrector for windowed motion generators.

A windowed generator emits its motion ``segment`` frames at a time; each segment is sampled on its own, so the
head pose jumps at the seams. PosNet rewrites the pose of each new segment from (a) the segment's own generated
pose and (b) the last pose of the previous *corrected* segment, leaving every other channel (expression) untouched.

Architecture, as released (REFERENCE.md section 4):

    encoder: pose [F, P] -> Conv1d(P, H, k) -> ReLU -> Conv1d(H, H, k) -> ReLU -> mean over time -> code [H]
    decoder: concat(previous last pose [P], code [H]) -> Dense(P + H, H) -> ReLU -> Dense(H, H) -> ReLU
             -> Dense(H, F * P) -> corrected pose [F, P]

with ``F = segment`` (25), ``P = pose_dim`` (6: 3 rotations + 3 translations), ``H = hidden`` (512), ``k = 3`` and
torch's default Conv1d padding (none). ``residual=True`` (ours, off by default) adds the decoder's output to the
generated pose instead of replacing it, and zero-initialises the last layer, so an untrained PosNet is the
identity.

Losses (paper eqs. 14-17) on the corrected pose ``Q [F, P]`` with previous last pose ``p [P]``:
``L_connect = mean_d |Q_0 - p|``, ``L_sm1 = mean |Q_{i+1} - Q_i|``, ``L_sm2 = mean (|Q_{i+2} - Q_{i+1}| - |Q_{i+1} -
Q_i|)`` (signed, as printed; ``sm2_form="abs"`` takes the absolute value of each difference) and the fidelity term
``L_general = mean (Q - target)^2``; ``L = L_general + 1 * L_connect + 1 * L_sm1 + 0.2 * L_sm2``.

Online use (``correct_sequence``): the first segment passes through unchanged; every later segment is corrected
from the last pose of the previous corrected segment, all segments in one ``lax.scan``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from avatarjax.nn.conv import Conv
from avatarjax.nn.linear import Dense


@dataclasses.dataclass(frozen=True)
class PosNetConfig:
    pose_dim: int = 6  # P: 3 rotations + 3 translations (REACT's last 6 of 58 coefficients)
    segment: int = 25  # F: new frames per window (window 50, slide 25 in the released code)
    hidden: int = 512  # H
    kernel_size: int = 3
    padding: str = "VALID"  # torch Conv1d's default (no padding); "SAME" keeps the length
    residual: bool = False  # True: corrected = generated + decoder output (identity at init)
    # per-dim scale the pose is divided by before the network and multiplied back after (1 = raw, as released)
    pose_scale: tuple[float, ...] = ()

    def scale(self) -> jax.Array:
        if not self.pose_scale:
            return jnp.ones((self.pose_dim,), jnp.float32)
        if len(self.pose_scale) != self.pose_dim:
            raise ValueError(f"pose_scale has {len(self.pose_scale)} numbers, pose_dim is {self.pose_dim}")
        return jnp.asarray(self.pose_scale, jnp.float32)


class PosNet(nnx.Module):
    """``(previous_last [B, P], pose [B, F, P]) -> corrected pose [B, F, P]`` (float32)."""

    def __init__(self, cfg: PosNetConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        valid = cfg.padding.upper() == "VALID"
        if valid and cfg.segment < 2 * (cfg.kernel_size - 1) + 1:
            raise ValueError(f"segment {cfg.segment} is too short for two unpadded convs of kernel "
                             f"{cfg.kernel_size}: use padding='SAME' or a longer segment")
        self.cfg = cfg
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        p, h = cfg.pose_dim, cfg.hidden
        self.conv1 = Conv(p, h, cfg.kernel_size, ndim=1, padding=cfg.padding.upper(), **kw)
        self.conv2 = Conv(h, h, cfg.kernel_size, ndim=1, padding=cfg.padding.upper(), **kw)
        self.fc1 = Dense(p + h, h, axes=("embed", "mlp"), **kw)
        self.fc2 = Dense(h, h, axes=("mlp", "embed"), **kw)
        zero = nnx.initializers.zeros if cfg.residual else None  # residual: the identity at init
        self.out = Dense(h, (cfg.segment, p), axes=("embed", None, None), kernel_init=zero, **kw)

    def __call__(self, previous_last: jax.Array, pose: jax.Array) -> jax.Array:
        cfg = self.cfg
        if pose.shape[1:] != (cfg.segment, cfg.pose_dim) or previous_last.shape != (pose.shape[0], cfg.pose_dim):
            raise ValueError(f"PosNet expects pose [B, {cfg.segment}, {cfg.pose_dim}] and previous_last "
                             f"[B, {cfg.pose_dim}], got {pose.shape} and {previous_last.shape}")
        scale = cfg.scale()
        x, prev = pose.astype(jnp.float32) / scale, previous_last.astype(jnp.float32) / scale
        h = jax.nn.relu(self._conv(self.conv2, jax.nn.relu(self._conv(self.conv1, x))))
        code = jnp.mean(h, axis=1)
        h = jax.nn.relu(self.fc1(jnp.concatenate([prev.astype(code.dtype), code], -1)))
        y = self.out(jax.nn.relu(self.fc2(h))).astype(jnp.float32)
        if cfg.residual:
            y = y + x
        return y * scale


    def _conv(self, conv: Conv, x: jax.Array) -> jax.Array:
        """``conv`` applied as a sum of ``k`` shifted matmuls: XLA:CPU runs a 1-D convolution inside ``lax.scan``
        (the online recurrence) on a slow path: a training step measured 7.4 s with lax.conv, 0.2 s with these."""
        k = conv.kernel_size[0]
        dtype = conv.dtype or x.dtype
        if self.cfg.padding.upper() == "SAME":
            x = jnp.pad(x, ((0, 0), ((k - 1) // 2, k // 2), (0, 0)))
        length = x.shape[1] - k + 1
        w = conv.kernel[...].astype(dtype)
        y = sum(jnp.einsum("bti,io->bto", x[:, i:i + length].astype(dtype), w[i]) for i in range(k))
        return y + conv.bias[...].astype(dtype)


def posnet_flops(cfg: PosNetConfig) -> float:
    """Forward FLOPs of one segment (2 per multiply-add)."""
    k, p, h, f = cfg.kernel_size, cfg.pose_dim, cfg.hidden, cfg.segment
    shrink = k - 1 if cfg.padding.upper() == "VALID" else 0
    return float(2 * ((f - shrink) * k * p * h + (f - 2 * shrink) * k * h * h + (p + h) * h + h * h + h * f * p))


# ------------------------------------------------------------------------------------------------------ losses
@dataclasses.dataclass(frozen=True)
class PosNetLossConfig:
    general_weight: float = 1.0  # L_general (eq. 14): MSE to the fidelity target
    connect_weight: float = 1.0  # lambda_1
    sm1_weight: float = 1.0  # lambda_2
    sm2_weight: float = 0.2  # lambda_3
    sm2_form: str = "paper"  # "paper": signed, as printed (telescopes); "abs": |(|d_{i+1}| - |d_i|)|
    fidelity: str = "truth"  # L_general's target: "truth" (the paper: the real reaction) or "generated"


def _steps(q: jax.Array) -> jax.Array:
    """``[..., F, P]`` -> ``[..., F - 1, P]`` absolute first differences."""
    return jnp.abs(q[..., 1:, :] - q[..., :-1, :])


def posnet_losses(corrected: jax.Array, previous_last: jax.Array, target: jax.Array, cfg: PosNetLossConfig,
                  mask: jax.Array | None = None) -> dict[str, jax.Array]:
    """The paper's loss terms, each averaged over segments (``mask [..]`` of 0/1 weights over the leading axes),
    frames and pose dims. ``corrected``/``target`` ``[..., F, P]``, ``previous_last`` ``[..., P]``."""
    if cfg.sm2_form not in ("paper", "abs"):
        raise ValueError(f"loss.sm2_form must be 'paper' or 'abs', got {cfg.sm2_form!r}")
    d1 = _steps(corrected)
    d2 = d1[..., 1:, :] - d1[..., :-1, :]
    terms = {
        "general": jnp.mean(jnp.square(corrected - target), axis=(-2, -1)),
        "connect": jnp.mean(jnp.abs(corrected[..., 0, :] - previous_last), axis=-1),
        "sm1": jnp.mean(d1, axis=(-2, -1)),
        "sm2": jnp.mean(d2 if cfg.sm2_form == "paper" else jnp.abs(d2), axis=(-2, -1)),
    }
    if mask is None:
        terms = {k: jnp.mean(v) for k, v in terms.items()}
    else:
        denom = jnp.maximum(jnp.sum(mask), 1.0)
        terms = {k: jnp.sum(v * mask) / denom for k, v in terms.items()}
    terms["total"] = (cfg.general_weight * terms["general"] + cfg.connect_weight * terms["connect"]
                      + cfg.sm1_weight * terms["sm1"] + cfg.sm2_weight * terms["sm2"])
    return terms


# ------------------------------------------------------------------------------------------------- online use
def correct_sequence(model: PosNet, pose: jax.Array) -> jax.Array:
    """Online correction of stitched segments: pose ``[B, S * F, P]`` -> ``[B, S * F, P]``.

    Segment 0 is kept; segment ``s >= 1`` becomes ``model(last corrected pose of segment s - 1, pose of s)``, in
    one ``lax.scan`` over segments (the same computation a streaming caller does one segment at a time).
    """
    f = model.cfg.segment
    b, t, p = pose.shape
    if t % f or t < f:
        raise ValueError(f"correct_sequence needs a whole number of {f}-frame segments, got {t} frames")
    segments = pose.reshape(b, t // f, f, p).swapaxes(0, 1)  # [S, B, F, P]
    graphdef, state = nnx.split(model)

    def step(last, seg):
        fixed = nnx.merge(graphdef, state)(last, seg)
        return fixed[:, -1], fixed

    _, rest = jax.lax.scan(step, segments[0][:, -1].astype(jnp.float32), segments[1:])
    out = jnp.concatenate([segments[:1].astype(jnp.float32), rest], axis=0)
    return out.swapaxes(0, 1).reshape(b, t, p)
