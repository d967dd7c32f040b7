"""The synthface face reader: a CNN that reads keypoints and the 24-channel face state from rendered pixels.

It plays the part OpenFace plays for real video: every system's generated synthface video is read back with it
to measure controllability (AU-F1, lip-sync, gaze, pose, jitter), and its accuracy on ground-truth renders is the
"GT Video" ceiling row of the evaluation tables.

Architecture: a lossless ``patch`` x ``patch`` space-to-depth, a 3x3 conv stem, then per stage ``blocks_per_stage``
``ResBlock2d`` (every stage after the first starts with a stride-2 ``Downsample2d``); GroupNorm + SiLU and a
flatten (keypoint regression needs to know *where* features are, which global pooling would discard) into a
hidden ``Dense``; the identity embedding joins there; one joint ``Dense`` and two linear heads.

Identity. The reader can be told who it is looking at (the synthface identity vector: 7 face-shape numbers and 4
colours), as OpenFace calibrates to the person: an action unit is a displacement from *this face's* neutral
position, and at 64 px a threshold-level AU moves a brow or lid by 0.1-0.3 px while the neutral brow height varies
by ~1.5 px across identities, so a blind reader's AU error is mostly a per-clip bias from guessing the neutral
face. Every synthface video we read has a known identity (the generator's conditioning). Without one (``identity``
None) a learned "unknown identity" embedding stands in; training drops the identity of a fraction
``identity_dropout`` of the frames so that both ways of reading are learned.

Reference frame (``reference=True``). The identity vector determines the face's neutral render exactly, so the
reader can instead be shown that render beside the frame (6 input channels): an AU is then a pixel displacement
between two aligned images rather than an offset from a position predicted from 19 numbers, which is what a
convolutional network reads well. Frames read blind get a zero reference.

Output normalisation (what the heads predict):
- keypoints: ``(kp - 0.5) / KEYPOINT_SCALE`` for normalised image keypoints ``kp`` (``geometry.keypoints``
  convention: x right, y down, the frame is [0, 1]^2), so a face-sized spread is about unit scale;
- state: each channel standardised by its schema range, ``(s - centre) / half_range`` in [-1, 1].
``FaceReader.__call__`` returns both in their natural units; ``normalise_*`` give the loss targets.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.data.synthface import dynamics, schema
from avatarjax.data.synthface.identity import COLOUR_FIELDS, IDENTITY_DIM, SHAPE_RANGES
from avatarjax.nn.conv import Conv, Downsample2d, GroupNorm, ResBlock2d
from avatarjax.nn.linear import Dense
from avatarjax.parallel.mesh import constrain

KEYPOINT_SCALE = 0.25  # normalised keypoint units per unit of the head's keypoint target
STATE_CENTRE = (schema.LOW + schema.HIGH) / 2  # [24]
STATE_HALF_RANGE = (schema.HIGH - schema.LOW) / 2  # [24]
_IDENTITY_LOW = np.array([lo for lo, _ in SHAPE_RANGES.values()] + [0.0] * 3 * len(COLOUR_FIELDS), np.float32)
_IDENTITY_HIGH = np.array([hi for _, hi in SHAPE_RANGES.values()] + [1.0] * 3 * len(COLOUR_FIELDS), np.float32)
_ACT = ("batch", "height", "width", "act_channels")


@dataclasses.dataclass(frozen=True)
class FaceReaderConfig:
    image_size: int = 64  # input frames are [N, image_size, image_size, 3]
    patch: int = 4  # space-to-depth factor before the stem (lossless: sub-pixel detail survives)
    stem_channels: int = 64
    channels: tuple[int, ...] = (64, 128, 128)  # per stage; stages after the first halve the resolution
    blocks_per_stage: int = 1
    hidden: int = 256
    identity_dim: int = 128
    identity_dropout: float = 0.25  # fraction of training frames read without their identity
    joint: int = 512
    groups: int = 8  # GroupNorm groups
    # also read a neutral render of the known identity, stacked on the frame's channels (see "Reference frame")
    reference: bool = False

    @property
    def final_size(self) -> int:
        return self.image_size // self.patch // 2 ** (len(self.channels) - 1)


def normalise_keypoints(kp: jax.Array) -> jax.Array:
    """Normalised image keypoints ``[..., 99, 2]`` -> the head's target scale."""
    return (kp - 0.5) / KEYPOINT_SCALE


def denormalise_keypoints(kp: jax.Array) -> jax.Array:
    """Inverse of ``normalise_keypoints``."""
    return kp * KEYPOINT_SCALE + 0.5


def normalise_state(state: jax.Array) -> jax.Array:
    """States ``[..., 24]`` in schema units -> each channel standardised by its range (in [-1, 1])."""
    return (state - STATE_CENTRE) / STATE_HALF_RANGE


def denormalise_state(state: jax.Array) -> jax.Array:
    """Inverse of ``normalise_state``: standardised ``[..., 24]`` -> schema units."""
    return state * STATE_HALF_RANGE + STATE_CENTRE


def normalise_identity(identity: jax.Array) -> jax.Array:
    """Identity vectors ``[..., 19]`` (``Identity.to_vector``) -> each field mapped from its range to [-1, 1]."""
    return (identity - _IDENTITY_LOW) / (_IDENTITY_HIGH - _IDENTITY_LOW) * 2.0 - 1.0


def frames_to_input(frames: jax.Array) -> jax.Array:
    """uint8 frames ``[N, S, S, 3]`` -> float32 in [-1, 1]."""
    return frames.astype(jnp.float32) / 127.5 - 1.0


class FaceReader(nnx.Module):
    """frames float ``[N, S, S, 3]`` in [-1, 1] and optional identity vectors ``[N, 19]`` -> dict(keypoints
    ``[N, 99, 2]``, state ``[N, 24]``).

    ``known`` (bool ``[N]``) marks the frames whose identity is used (the others are read blind). ``keypoints``
    are normalised image coordinates, ``state`` is in schema units (not clipped to the ranges; ``read_frames``
    clips). ``normalised=True`` returns the raw head outputs instead (the loss's scale, see the module docstring).
    """

    def __init__(self, cfg: FaceReaderConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        if cfg.image_size % (cfg.patch * 2 ** (len(cfg.channels) - 1)):
            raise ValueError(f"image_size {cfg.image_size} must divide by patch * 2^(stages - 1) = "
                             f"{cfg.patch * 2 ** (len(cfg.channels) - 1)}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.cfg = cfg
        in_channels = 6 if cfg.reference else 3
        self.stem = Conv(in_channels * cfg.patch ** 2, cfg.stem_channels, 3, **kw)
        stages, ch = [], cfg.stem_channels
        for i, out in enumerate(cfg.channels):
            blocks = [Downsample2d(ch, **kw)] if i else []
            for _ in range(cfg.blocks_per_stage):
                blocks.append(ResBlock2d(ch, out, groups=cfg.groups, **kw))
                ch = out
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        self.norm = GroupNorm(ch, cfg.groups, param_dtype=param_dtype)
        side = cfg.final_size
        self.hidden = Dense((side, side, ch), cfg.hidden, axes=(None, None, "embed", "mlp"), **kw)
        self.identity = Dense(IDENTITY_DIM, cfg.identity_dim, axes=(None, "mlp"), **kw)
        self.unknown_identity = nnx.Param(jnp.zeros((cfg.identity_dim,), param_dtype), out_sharding=("mlp",))
        self.joint = Dense(cfg.hidden + cfg.identity_dim, cfg.joint, axes=("mlp", "embed"), **kw)
        self.keypoint_head = Dense(cfg.joint, (schema.NUM_KEYPOINTS, 2), axes=("embed", None, None), **kw)
        self.state_head = Dense(cfg.joint, schema.NUM_CHANNELS, axes=("embed", None), **kw)

    def __call__(self, x: jax.Array, identity: jax.Array | None = None, *, known: jax.Array | None = None,
                 reference: jax.Array | None = None, normalised: bool = False) -> dict[str, jax.Array]:
        size, p = self.cfg.image_size, self.cfg.patch
        if x.shape[1:] != (size, size, 3):
            raise ValueError(f"FaceReader expects frames [N, {size}, {size}, 3], got {x.shape}")
        n = x.shape[0]
        if self.cfg.reference:
            ref = jnp.zeros_like(x) if reference is None else reference.astype(x.dtype)
            if known is not None:
                ref = jnp.where(known[:, None, None, None], ref, 0.0)
            x = jnp.concatenate([x, ref], axis=-1)
        c = x.shape[-1]
        x = x.reshape(n, size // p, p, size // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, size // p, size // p, -1)
        h = constrain(self.stem(x), _ACT)
        for stage in self.stages:
            for block in stage:
                h = constrain(block(h), _ACT)
        h = jax.nn.silu(self.hidden(jax.nn.silu(self.norm(h))))
        e = jnp.broadcast_to(self.unknown_identity[...].astype(h.dtype), (n, self.cfg.identity_dim))
        if identity is not None:
            given = self.identity(normalise_identity(identity).astype(h.dtype))
            e = given if known is None else jnp.where(known[:, None], given, e)
        e = jax.nn.silu(e)
        h = jax.nn.silu(self.joint(jnp.concatenate([h, e], -1)))
        kp, state = self.keypoint_head(h).astype(jnp.float32), self.state_head(h).astype(jnp.float32)
        if normalised:
            return {"keypoints": kp, "state": state}
        return {"keypoints": denormalise_keypoints(kp), "state": denormalise_state(state)}


def face_reader_flops(cfg: FaceReaderConfig) -> float:
    """Forward FLOPs of one frame (2 per multiply-add of every conv and dense layer; norms ignored)."""
    size, ch = cfg.image_size // cfg.patch, cfg.stem_channels
    flops = 2 * size * size * 9 * (6 if cfg.reference else 3) * cfg.patch ** 2 * ch
    for i, out in enumerate(cfg.channels):
        if i:
            size //= 2
            flops += 2 * size * size * 9 * ch * ch
        for _ in range(cfg.blocks_per_stage):
            flops += 2 * size * size * (9 * ch * out + 9 * out * out + (ch * out if ch != out else 0))
            ch = out
    flops += 2 * size * size * ch * cfg.hidden + 2 * IDENTITY_DIM * cfg.identity_dim
    flops += 2 * (cfg.hidden + cfg.identity_dim) * cfg.joint
    flops += 2 * cfg.joint * (2 * schema.NUM_KEYPOINTS + schema.NUM_CHANNELS)
    return float(flops)


@functools.partial(jax.jit, static_argnums=0)
def _read(graphdef, state, frames: jax.Array, identity: jax.Array | None,
          reference: jax.Array | None) -> dict[str, jax.Array]:
    ref = None if reference is None else frames_to_input(reference)
    return nnx.merge(graphdef, state)(frames_to_input(frames), identity, reference=ref)


def neutral_references(identity: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[N, S, S, 3]`` neutral renders of identity vectors ``[N, 19]`` (each distinct identity drawn once)."""
    from avatarjax.data.synthface import identity as identity_lib, render

    identity = np.asarray(identity, np.float32)
    unique, inverse = np.unique(identity, axis=0, return_inverse=True)
    drawn = np.stack([render.render_frames(identity_lib.Identity.from_vector(v), schema.neutral_state(1), size)[0]
                      for v in unique])
    return drawn[np.asarray(inverse).reshape(-1)]


def read_frames(model: FaceReader, frames: np.ndarray, identity: np.ndarray | None = None,
                batch: int = 256) -> dict[str, np.ndarray]:
    """Read uint8 frames ``[T, S, S, 3]`` in chunks of ``batch`` frames, one jitted forward per chunk.

    ``identity``: the face's identity vector ``[19]`` (or ``[T, 19]``, one per frame); None reads blind (less
    accurate AUs, see the module docstring).

    Returns numpy ``state`` float32 ``[T, 24]`` (clipped to ``schema.RANGES``) and ``keypoints`` float32
    ``[T, 99, 2]``. The last chunk is padded to the chunk size, so every chunk reuses one compiled forward.
    """
    frames = np.asarray(frames, np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"read_frames expects uint8 frames [T, S, S, 3], got {frames.shape}")
    total = len(frames)
    if total == 0:
        return {"state": np.zeros((0, schema.NUM_CHANNELS), np.float32),
                "keypoints": np.zeros((0, schema.NUM_KEYPOINTS, 2), np.float32)}
    chunk = min(batch, total)
    pad = math.ceil(total / chunk) * chunk - total
    frames = np.concatenate([frames, np.zeros((pad,) + frames.shape[1:], np.uint8)])
    if identity is not None:
        identity = np.broadcast_to(np.asarray(identity, np.float32), (total, IDENTITY_DIM))
        identity = np.concatenate([identity, np.repeat(identity[-1:], pad, axis=0)])  # padding: any real face
    graphdef, state = nnx.split(model)
    reference = (neutral_references(identity, model.cfg.image_size) if model.cfg.reference and identity is not None
                 else None)
    part = lambda x, i: None if x is None else x[i:i + chunk]
    outs = [jax.device_get(_read(graphdef, state, frames[i:i + chunk], part(identity, i), part(reference, i)))
            for i in range(0, total + pad, chunk)]
    kp = np.concatenate([o["keypoints"] for o in outs])[:total]
    st = np.concatenate([o["state"] for o in outs])[:total]
    return {"state": schema.clip_to_range(st), "keypoints": kp.astype(np.float32)}


def au_from_frames(model: FaceReader, frames: np.ndarray, identity: np.ndarray | None = None, batch: int = 256,
                   thresholds: np.ndarray | None = None) -> np.ndarray:
    """bool ``[T, 10]`` per-frame AU activations of the state ``read_frames`` reads from uint8 frames
    ``[T, S, S, 3]`` (``dynamics.au_activation``; thresholds default to ``dynamics.AU_THRESHOLDS``)."""
    return dynamics.au_activation(read_frames(model, frames, identity, batch)["state"], thresholds)
