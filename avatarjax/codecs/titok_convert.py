"""Loading TiTok checkpoints (bytedance/1d-tokenizer, "An Image is Worth 32 Tokens") into the video tokenizer.

``avatarjax convert titok --from DIR_OR_FILE --to OUT``. The source is a directory saved by TiTok's
``PyTorchModelHubMixin`` (``model.safetensors`` or ``pytorch_model.bin``, plus its ``config.json``) or one state
dict file (``.safetensors`` / ``.bin`` / ``.pt`` / ``.pth``, e.g. the released ``tokenizer_titok_l32.bin``).
Every dimension is read from the tensor shapes (width, depth, patch size, frame size, K, token size, VAE vs VQ,
legacy head); the head count is ``width // 64``, which holds for all of TiTok's sizes (S 512/8, B 768/12,
L 1024/16). TA-TiTok (text-conditioned decoder) is refused.

What maps, exactly (the parity test ``tests/parity/test_titok.py`` checks it against a plain-torch forward):

- encoder: ``patch_embed`` (Conv2d p x p, stride p) -> ``encoder/patch_embed``; ``class_embedding`` +
  ``positional_embedding[0]`` -> ``encoder/class_token`` (``class_token=True``); ``positional_embedding[1:]`` ->
  ``patch_pos``; ``latent_tokens`` + ``latent_token_positional_embedding`` -> ``latent_tokens`` (both are constant
  per position, so their sum is the same input); ``ln_pre`` -> ``transformer/pre_norm`` (``pre_norm=True``);
  each ``ResidualAttentionBlock`` (ln_1, ``nn.MultiheadAttention`` in_proj / out_proj, ln_2, mlp c_fc / GELU /
  c_proj) -> the stacked ``Block``s (no QK norm, LayerNorm eps 1e-5); ``ln_post`` -> ``transformer/norm`` (a
  per-token norm, so normalising every token and keeping the last K equals TiTok's keep-then-normalise);
  ``conv_out`` (1x1) -> ``to_latent``. ``is_legacy`` checkpoints reshape (not transpose) the ``[K, width]``
  features to ``[width, K]`` before ``conv_out``: ``legacy_token_layout=True`` reproduces that permutation.
- decoder: ``decoder_embed`` -> ``latent_proj``; ``latent_token_positional_embedding`` -> ``latent_pos``;
  ``mask_token`` -> ``mask_token``; ``positional_embedding`` -> ``class_token`` (with ``class_embedding``) and
  ``patch_pos``; ``ln_pre``, blocks, ``ln_post`` as the encoder's. Non-legacy (pixel) decoders: the 1x1 ``ffn``
  conv -> ``to_pixels`` (its ``(p1 p2 c)`` channel order is our patch order) and the 3x3 ``conv_out`` ->
  ``pixel_conv`` (``pixel_conv=True``).
- pixel range: TiTok reads and writes images in [0, 1]; ours are [-1, 1]. The affine maps are folded into the
  weights: ``patch_embed`` gets ``W / 2`` and ``b + sum(W) / 2``; the last pixel layer gets ``2 W`` and
  ``2 b - 1``. The converted model therefore equals TiTok on ``2 x - 1`` inputs / ``2 y - 1`` outputs.

What does not map (the converter says so through ``NOT_CONVERTED`` and the log):

- VAE checkpoints (``quantize_mode: vae``, ``conv_out`` giving 2 x token_size channels, mean first): the
  Gaussian posterior is ours (``regularizer="kl"``) exactly.
- VQ checkpoints: we take the continuous pre-quantisation latents (``conv_out``'s output, ``regularizer="noise"``);
  TiTok's codebook (``quantize.embedding``) and, with ``use_l2_norm``, the L2 normalisation before lookup are
  dropped, so decoding our latents is not decoding TiTok's quantised codes.
- legacy decoders (``is_legacy``: the released VQ tokenizers titok_l32 / b64 / s128) predict MaskGIT-VQGAN code
  logits (``ffn``: 1x1 conv, tanh, 1x1 conv to 1024) that a frozen VQGAN pixel decoder (``pixel_decoder``,
  ``pixel_quantize``) turns into pixels. The decoder's embeddings, blocks and norms map; ``to_pixels`` is freshly
  initialised (our decoder predicts pixels directly) and needs training; the VQGAN parts are ignored.
- the causal temporal Transformer (TiTok is per-image): ``TEMPORAL_LAYERS`` freshly initialised blocks with
  zeroed residual outputs (attention ``o_proj`` and MLP ``fc2``) and no final norm, so at conversion the temporal
  stage is the identity and ``encode`` equals TiTok's per-frame encoder on every frame; training then learns the
  cross-frame mixing (a ``temporal_layers`` key in ``model.vq_model`` of the config changes the count).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from avatarjax.checkpoint.convert import Converter, param_paths
from avatarjax.codecs import video_tokenizer as vt
from avatarjax.errors import CheckpointError

log = logging.getLogger(__name__)

TEMPORAL_LAYERS = 2
HEAD_DIM = 64  # TiTok's sizes: small 512/8, base 768/12, large 1024/16 heads
NORM_EPS = 1e-5  # torch nn.LayerNorm default
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _load_state_dict(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        from avatarjax.checkpoint.convert import _load_safetensors_any_dtype
        from safetensors.numpy import load_file

        return _load_safetensors_any_dtype(path, load_file)
    import torch

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"'{path}' cannot be read by torch.load ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]}): pass a TiTok state dict file") from err
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise CheckpointError(f"'{path}' does not hold a state dict: pass a TiTok checkpoint")
    return {k: v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
            for k, v in raw.items() if hasattr(v, "numpy")}


def _optional_config(path: Path) -> dict:
    """TiTok's config (``config.json`` of a hub directory or a ``<stem>.json`` / ``.yaml`` beside a file), or {}."""
    folder = path if path.is_dir() else path.parent
    candidates = [folder / "config.json"] if path.is_dir() else [
        path.with_suffix(".json"), path.with_suffix(".yaml"), path.with_suffix(".yml"), folder / "config.json"]
    for c in candidates:
        if c.is_file():
            if c.suffix == ".json":
                return json.loads(c.read_text())
            import yaml

            return yaml.safe_load(c.read_text()) or {}
    return {}


def read_titok_checkpoint(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(our config fields inferred from the tensors, TiTok tensors by name) from a directory or a file."""
    path = Path(path)
    if path.is_dir():
        found = [path / f for f in WEIGHT_FILES if (path / f).is_file()]
        if not found:
            raise CheckpointError(f"'{path}' holds none of {', '.join(WEIGHT_FILES)}: pass a TiTok hub directory "
                                  "(TiTok.save_pretrained) or one state dict file")
        file = found[0]
    elif path.is_file() and path.suffix in SUFFIXES:
        file = path
    else:
        raise CheckpointError(f"TiTok checkpoint '{path}' is neither a directory nor a {'/'.join(SUFFIXES)} file: "
                              "pass a TiTok hub directory or e.g. tokenizer_titok_l32.bin")
    tensors = _load_state_dict(file)
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return infer_config(tensors, _optional_config(path)), tensors


def _count_blocks(hf: dict, prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}\.transformer\.(\d+)\.")
    ids = {int(m.group(1)) for k in hf if (m := pattern.match(k))}
    if not ids or ids != set(range(len(ids))):
        raise CheckpointError(f"the checkpoint has no (or non-contiguous) '{prefix}.transformer.N' blocks: is it a "
                              "TiTok checkpoint?")
    return len(ids)


def _need(hf: dict, name: str) -> np.ndarray:
    if name not in hf:
        raise CheckpointError(f"the checkpoint lacks '{name}': is it a TiTok (bytedance/1d-tokenizer) checkpoint?")
    return hf[name]


def infer_config(hf: dict[str, np.ndarray], titok_config: dict | None = None) -> dict:
    """Our ``VideoTokenizerConfig`` fields from TiTok tensor shapes (``titok_config`` only adds
    ``temporal_layers``, and its ``quantize_mode`` / ``is_legacy`` are checked against the shapes)."""
    if any(k.startswith("decoder.text_guidance") for k in hf):
        raise CheckpointError("this is a TA-TiTok checkpoint (text-guided decoder), which the video tokenizer "
                              "cannot hold: pass a TiTok checkpoint")
    enc_w = _need(hf, "encoder.class_embedding").shape[-1]
    dec_w = _need(hf, "decoder.class_embedding").shape[-1]
    patch = _need(hf, "encoder.patch_embed.weight").shape[-1]
    grid = round((_need(hf, "encoder.positional_embedding").shape[0] - 1) ** 0.5)
    k = _need(hf, "latent_tokens").shape[0]
    token_size = _need(hf, "decoder.decoder_embed.weight").shape[1]
    out_channels = _need(hf, "encoder.conv_out.weight").shape[0]
    if out_channels not in (token_size, 2 * token_size):
        raise CheckpointError(f"encoder.conv_out gives {out_channels} channels for token size {token_size}: not a "
                              "TiTok VQ (token_size) or VAE (2 x token_size) checkpoint")
    vae = out_channels == 2 * token_size
    legacy = "decoder.ffn.2.weight" in hf
    dec_patch = patch  # a legacy head predicts VQGAN codes per token: it has no pixel patch size of its own
    if not legacy:
        pixels = _need(hf, "decoder.ffn.0.weight").shape[0]
        dec_patch = round((pixels // 3) ** 0.5)
    if dec_patch != patch:
        raise CheckpointError(f"encoder patch {patch} and decoder patch {dec_patch} differ: the video tokenizer "
                              "uses one patch size")
    vq = dict((titok_config or {}).get("model", {}).get("vq_model", {}) or {})
    if "quantize_mode" in vq and (vq["quantize_mode"] == "vae") != vae:
        raise CheckpointError(f"config.json says quantize_mode={vq['quantize_mode']!r} but encoder.conv_out has "
                              f"{out_channels} channels for token size {token_size}")
    if "is_legacy" in vq and bool(vq["is_legacy"]) != legacy:
        raise CheckpointError(f"config.json says is_legacy={vq['is_legacy']} but the decoder head says otherwise")
    for w in (enc_w, dec_w):
        if w % HEAD_DIM:
            raise CheckpointError(f"width {w} is not a multiple of {HEAD_DIM}: not one of TiTok's ViT sizes")
    return dict(
        frame_size=grid * patch, patch_size=patch, dim=enc_w, num_heads=enc_w // HEAD_DIM,
        mlp_dim=_need(hf, "encoder.transformer.0.mlp.c_fc.weight").shape[0],
        encoder_layers=_count_blocks(hf, "encoder"), temporal_layers=int(vq.get("temporal_layers", TEMPORAL_LAYERS)),
        decoder_layers=_count_blocks(hf, "decoder"), num_latent_tokens=k, latent_dim=token_size,
        regularizer="kl" if vae else "noise", qk_norm=False, decoder_dim=dec_w, decoder_heads=dec_w // HEAD_DIM,
        decoder_mlp_dim=_need(hf, "decoder.transformer.0.mlp.c_fc.weight").shape[0], norm_eps=NORM_EPS,
        class_token=True, pre_norm=True, pixel_conv=not legacy, legacy_token_layout=legacy,
        temporal_final_norm=False)


def config_from_titok(fields: dict) -> vt.VideoTokenizerConfig:
    return vt.VideoTokenizerConfig(**fields)


def not_converted(cfg: vt.VideoTokenizerConfig) -> list[str]:
    """What the converted model holds that no TiTok weight sets, in words."""
    notes = [f"temporal Transformer ({cfg.temporal_layers} layers): fresh, residual outputs zeroed (identity "
             "until trained)"]
    if cfg.regularizer == "noise":
        notes.append("VQ checkpoint: latents are the continuous pre-quantisation outputs (codebook and its L2 "
                     "normalisation dropped)")
    if not cfg.pixel_conv:
        notes.append("legacy decoder predicts MaskGIT-VQGAN codes: decoder/to_pixels is fresh (the VQGAN pixel "
                     "decoder is not converted)")
    return notes


def build(cfg: vt.VideoTokenizerConfig, rngs: nnx.Rngs, *, dtype=None, param_dtype=jnp.float32):
    return vt.VideoTokenizer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def _fresh(cfg: vt.VideoTokenizerConfig) -> dict[str, np.ndarray]:
    """The parameters TiTok lacks, freshly initialised (seed 0): the temporal stack with zeroed residual outputs
    and, for legacy decoders (no pixel head: ``pixel_conv`` off), ``to_pixels``. Built alone, so no second copy
    of the whole model is made."""
    from avatarjax.nn.linear import Dense

    rngs = nnx.Rngs(0)
    out: dict[str, np.ndarray] = {}
    with nnx.use_eager_sharding(False):
        temporal = vt.Transformer(cfg, cfg.temporal_layers, final_norm=cfg.temporal_final_norm, rngs=rngs)
        for path, var in param_paths(temporal).items():
            value = np.asarray(var.get_value())
            if path.startswith(("layers/attn/o_proj/", "layers/mlp/fc2/")):
                value = np.zeros_like(value)
            out[f"temporal/{path}"] = value
        if not cfg.pixel_conv:
            head = Dense(cfg.dec_dim, cfg.patch_dim, axes=("embed", "features"), rngs=rngs)
            out.update({f"decoder/to_pixels/{p}": np.asarray(v.get_value()) for p, v in param_paths(head).items()})
    return out


def _blocks(hf: dict, prefix: str, ours: str, layers: int, heads: int) -> dict[str, np.ndarray]:
    def stack(name: str, fn=lambda w: w) -> np.ndarray:
        return np.stack([fn(_need(hf, f"{prefix}.transformer.{i}.{name}")) for i in range(layers)])

    d = _need(hf, f"{prefix}.class_embedding").shape[-1]
    hd = d // heads
    out = {}
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):  # in_proj rows are [q; k; v], heads contiguous
        rows = slice(i * d, (i + 1) * d)
        out[f"{ours}/layers/attn/{name}/kernel"] = stack("attn.in_proj_weight",
                                                         lambda w, r=rows: w[r].T.reshape(d, heads, hd))
        out[f"{ours}/layers/attn/{name}/bias"] = stack("attn.in_proj_bias", lambda w, r=rows: w[r].reshape(heads, hd))
    out.update({
        f"{ours}/layers/attn/o_proj/kernel": stack("attn.out_proj.weight", lambda w: w.T.reshape(heads, hd, d)),
        f"{ours}/layers/attn/o_proj/bias": stack("attn.out_proj.bias"),
        f"{ours}/layers/norm1/scale": stack("ln_1.weight"), f"{ours}/layers/norm1/bias": stack("ln_1.bias"),
        f"{ours}/layers/norm2/scale": stack("ln_2.weight"), f"{ours}/layers/norm2/bias": stack("ln_2.bias"),
        f"{ours}/layers/mlp/fc1/kernel": stack("mlp.c_fc.weight", np.transpose),
        f"{ours}/layers/mlp/fc1/bias": stack("mlp.c_fc.bias"),
        f"{ours}/layers/mlp/fc2/kernel": stack("mlp.c_proj.weight", np.transpose),
        f"{ours}/layers/mlp/fc2/bias": stack("mlp.c_proj.bias"),
        f"{ours}/pre_norm/scale": _need(hf, f"{prefix}.ln_pre.weight"),
        f"{ours}/pre_norm/bias": _need(hf, f"{prefix}.ln_pre.bias"),
        f"{ours}/norm/scale": _need(hf, f"{prefix}.ln_post.weight"),
        f"{ours}/norm/bias": _need(hf, f"{prefix}.ln_post.bias"),
    })
    return out


def map_weights(hf: dict[str, np.ndarray], cfg: vt.VideoTokenizerConfig) -> dict[str, np.ndarray]:
    """TiTok tensors -> our parameter paths (see the module docstring); fills the rest with ``_fresh``."""
    p = cfg.patch_size
    f32 = {k: np.asarray(v, np.float32) for k, v in hf.items() if np.issubdtype(np.asarray(v).dtype, np.floating)}
    out = _blocks(f32, "encoder", "encoder/transformer", cfg.encoder_layers, cfg.num_heads)
    out.update(_blocks(f32, "decoder", "decoder/transformer", cfg.decoder_layers, cfg.dec_heads))

    # encoder: [W, 3, p, p] conv -> [(row, col, channel), W] kernel; inputs 2x - 1 folded in (x01 = (x + 1) / 2)
    w = _need(f32, "encoder.patch_embed.weight").transpose(2, 3, 1, 0).reshape(p * p * 3, cfg.dim)
    out["encoder/patch_embed/kernel"] = w / 2
    out["encoder/patch_embed/bias"] = _need(f32, "encoder.patch_embed.bias") + w.sum(axis=0) / 2
    pos = _need(f32, "encoder.positional_embedding")
    out["encoder/class_token"] = _need(f32, "encoder.class_embedding").reshape(1, -1) + pos[:1]
    out["encoder/patch_pos"] = pos[1:]
    out["encoder/latent_tokens"] = _need(f32, "latent_tokens") + _need(f32, "encoder.latent_token_positional_embedding")
    out["to_latent/kernel"] = _need(f32, "encoder.conv_out.weight")[:, :, 0, 0].T
    out["to_latent/bias"] = _need(f32, "encoder.conv_out.bias")

    # decoder
    pos = _need(f32, "decoder.positional_embedding")
    out["decoder/class_token"] = _need(f32, "decoder.class_embedding").reshape(1, -1) + pos[:1]
    out["decoder/patch_pos"] = pos[1:]
    out["decoder/mask_token"] = _need(f32, "decoder.mask_token").reshape(1, -1)
    out["decoder/latent_pos"] = _need(f32, "decoder.latent_token_positional_embedding")
    out["decoder/latent_proj/kernel"] = _need(f32, "decoder.decoder_embed.weight").T
    out["decoder/latent_proj/bias"] = _need(f32, "decoder.decoder_embed.bias")
    if cfg.pixel_conv:  # TiTok's pixel head (non-legacy); a legacy head predicts VQGAN codes instead
        out["decoder/to_pixels/kernel"] = _need(f32, "decoder.ffn.0.weight")[:, :, 0, 0].T
        out["decoder/to_pixels/bias"] = _need(f32, "decoder.ffn.0.bias")
        # outputs y in [0, 1] -> 2y - 1
        out["decoder/pixel_conv/kernel"] = 2 * _need(f32, "decoder.conv_out.weight").transpose(2, 3, 1, 0)
        out["decoder/pixel_conv/bias"] = 2 * _need(f32, "decoder.conv_out.bias") - 1
    out.update(_fresh(cfg))
    for note in not_converted(cfg):
        log.warning("titok conversion: %s", note)
    return out


CONVERTER = Converter(
    name="titok",
    config_type=vt.VideoTokenizerConfig,
    source="bytedance/1d-tokenizer (TiTok): a hub directory saved by TiTok.save_pretrained (model.safetensors + "
           "config.json) or a released state dict file such as tokenizer_titok_l32.bin",
    config_from_hf=config_from_titok,
    build=build,
    map_weights=map_weights,
    read_checkpoint=read_titok_checkpoint,
)
