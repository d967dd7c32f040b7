"""The long-form drift report shared by the windowed pipelines (InstructAvatar, CogPortrait): per-chunk curves,
seam jumps, exact durations, and their plot.

A *chunk* is the frames one window adds beyond its continued prefix (``WindowPlan.chunks``). Per chunk:

- ``colour_distance``: the face region's mean colour against the portrait's (0-255 RGB,
  ``windowed.chunk_colour_distance``);
- ``identity_distance`` (when the pipeline gives an ``identity_code``): the code of up to 8 of the chunk's frames
  against the portrait's, relative L2;
- ``target_distance`` and ``target_colour_distance`` (when the pipeline gives ``target_frames``, the frames the
  output should look like: CogPortrait's driving keypoints rendered, InstructAvatar's read-back states rendered
  with the portrait's identity): the face region's mean absolute pixel error against them, and the distance of
  the two face-region mean colours. Both compare like with like, so expression and pose do not move them;
  ``colour_distance`` and ``identity_distance`` against the still portrait do move with what the face does;
- ``lipsync``: the best mouth/audio-envelope correlation within +-200 ms over the chunk's whole window;
  ``lipsync_truth``: the same score of the synthface world's own face for this audio, measured the same way;
  ``lipsync_relative`` = their ratio. A chunk's raw score depends on how much its audio varies (pauses, long
  syllables); the ratio does not, so its curve is the lip-sync drift curve;
- ``mouth_amplitude``: the mouth signal's standard deviation over the chunk's window relative to the world's own
  face's. Correlation ignores scale, so a mouth that moves in time with the audio but by a fraction of a grey
  level still scores a high ``lipsync``: this says how much it moves (1 = as much as the world's face).

Each curve is summarised by ``relative_drift`` (max deviation from the first chunk, and the change of a fitted
line, which separates drift from chunk-to-chunk noise). Seams: ``windowed.seam_jumps`` on the face region's
frame-to-frame pixel change (and on the latents' when given), with ``seam_ok`` = seam p95 <= the like-for-like
within-chunk p95.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from avatarjax.data.synthface import render, schema
from avatarjax.eval import lipsync

FRAME_MS = 1000.0 / schema.FPS


def relative_drift(values: list[float]) -> dict:
    """How far per-chunk values move from the first chunk's: first/last/mean/min/max, the max relative deviation
    from the first (``None`` when the first value is 0), the fraction of chunks within 10% of the first, and the
    change of a fitted line over all chunks (absolute and relative to the line's start)."""
    v = np.asarray(values, np.float64)
    first = v[0]
    out = {"first": float(first), "last": float(v[-1]), "mean": float(v.mean()), "max": float(v.max()),
           "min": float(v.min())}
    if abs(first) > 1e-9:
        out["max_rel_dev_from_first"] = float(np.max(np.abs(v - first)) / abs(first))
        out["frac_within_10pct_of_first"] = float(np.mean(np.abs(v - first) <= 0.1 * abs(first)))
    else:
        out["max_rel_dev_from_first"] = out["frac_within_10pct_of_first"] = None
    if len(v) > 1:  # the drift itself, robust to per-chunk noise: a least-squares line's change over the utterance
        slope, intercept = np.polyfit(np.arange(len(v)), v, 1)
        out["fitted_change"] = float(slope * (len(v) - 1))
        out["fitted_rel_change"] = float(slope * (len(v) - 1) / abs(intercept)) if abs(intercept) > 1e-9 else None
    return out


def mouth_box(identity, size: int, margin: float = 0.35) -> tuple[slice, slice]:
    """Pixel rows/columns around the neutral face's mouth (synthface geometry), widened by ``margin``."""
    from avatarjax.data.synthface import geometry

    pts = geometry.keypoints(identity, schema.neutral_state(1))[0][geometry.MOUTH] * size
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    mx, my = (x1 - x0) * margin, max((y1 - y0) * margin * 2, 2.0)
    clip = lambda v: int(np.clip(round(v), 0, size))  # noqa: E731
    return slice(clip(y0 - my), clip(y1 + 2 * my)), slice(clip(x0 - mx), clip(x1 + mx))


def mouth_box_signal(identity, portrait: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``frames [T, S, S, 3] -> [T]``: the mouth box's mean absolute pixel change from the portrait."""
    rows, cols = mouth_box(identity, portrait.shape[0])
    ref = portrait[rows, cols].astype(np.float32)

    def signal(frames: np.ndarray) -> np.ndarray:
        return np.abs(frames[:, rows, cols].astype(np.float32) - ref).mean(axis=(1, 2, 3))

    return signal


def true_talking_state(audio: np.ndarray, num_frames: int) -> np.ndarray:
    """The synthface world's own talking face state ``[T, 24]`` for ``audio``: neutral, with the jaw the training
    clips get from the same audio (``audio.jaw_from_envelope`` at ``clips.LIP_LAG_FRAMES``)."""
    from avatarjax.data.synthface import audio as synth_audio
    from avatarjax.data.synthface.clips import LIP_LAG_FRAMES

    jaw = synth_audio.jaw_from_envelope(synth_audio.frame_envelope(audio)[:num_frames], LIP_LAG_FRAMES)
    state = schema.neutral_state(num_frames)
    j = schema.CHANNELS.index("jaw_open")
    base = np.clip(state[:, j], 0.0, 1.0)
    state[:, j] = base + (1.0 - base) * jaw
    return state


def true_talking_frames(identity, audio: np.ndarray, num_frames: int, size: int) -> np.ndarray:
    """``true_talking_state`` rendered: uint8 ``[T, S, S, 3]``."""
    return render.render_frames(identity, true_talking_state(audio, num_frames), size=size)


def utterance(size: int, seconds: float, seed: int = 0, identity: int | None = None, extra_samples: int = 137):
    """The long-form test input: ``(identity index, Identity, neutral portrait uint8 [S, S, 3], speech float32)``:
    a held-out synthface identity (default the first) and ``seconds`` of synthetic speech plus ``extra_samples``
    (a partial last frame, to exercise the tail)."""
    from avatarjax.data.synthface import audio as synth_audio, identity as identity_lib
    from avatarjax.pipelines.demo_inputs import first_heldout_identity

    index = first_heldout_identity() if identity is None else identity
    ident = identity_lib.sample_identity(index)
    portrait = render.render_frames(ident, schema.neutral_state(1), size=size)[0]
    whole = int(round(seconds * schema.FPS))
    wave, _, _ = synth_audio.synth_speech(np.random.default_rng(seed), whole + 1)
    return index, ident, portrait, wave[:whole * schema.SAMPLES_PER_FRAME + extra_samples].astype(np.float32)


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def drift_report(frames: np.ndarray, audio: np.ndarray, portrait: np.ndarray, plan, *,
                 mouth_of: Callable[[np.ndarray], np.ndarray], truth_frames: np.ndarray,
                 identity_code: Callable[[np.ndarray], np.ndarray] | None = None,
                 target_frames: np.ndarray | None = None, latent_motion: np.ndarray | None = None,
                 input_audio_samples: int | None = None) -> dict:
    """The report's measured part (see the module docstring) for one generated utterance.

    frames uint8 ``[T, S, S, 3]``; audio: the output audio (``T * 640`` samples when the durations match);
    portrait uint8 ``[S, S, 3]``; plan: the frame-level ``windowed.WindowPlan``; ``mouth_of``: ``frames -> [T]``
    mouth signal (the same function scores ``truth_frames``, the world's own face for this audio);
    ``identity_code``: ``frames [n, S, S, 3] -> [n, D]`` (optional); ``target_frames``: the frames the output
    should equal, when the conditioning fixes them (optional: each chunk's ``target_distance``, the face region's
    mean absolute pixel error against them, and its curve ``target``); ``latent_motion`` ``[T - 1]`` (optional);
    ``input_audio_samples``: the input's length, for the tail check."""
    from avatarjax.pipelines import windowed

    n = len(frames)
    region = windowed.face_region(portrait.shape[0])
    envelope = lipsync.audio_rms_envelope(audio, num_frames=n)
    mouth, truth_mouth = mouth_of(frames), mouth_of(truth_frames)
    ref_code = None if identity_code is None else np.asarray(identity_code(portrait[None]), np.float32).reshape(-1)
    chunks = []
    for k, (first, end) in enumerate(plan.chunks()):
        if end <= first:
            continue
        chunk = {"first_frame": int(first), "end_frame": int(end),
                 "colour_distance": windowed.chunk_colour_distance(frames[first:end], portrait, region)}
        if ref_code is not None:
            pick = np.linspace(first, end - 1, min(8, end - first)).round().astype(int)
            codes = np.asarray(identity_code(frames[pick]), np.float32).reshape(len(pick), -1)
            chunk["identity_distance"] = float(np.mean(np.linalg.norm(codes - ref_code, axis=1))
                                               / np.linalg.norm(ref_code))
        if target_frames is not None:
            err = np.abs(frames[first:end].astype(np.float32) - target_frames[first:end].astype(np.float32))
            chunk["target_distance"] = float((err.mean(axis=-1) * region).sum(axis=(1, 2)).mean() / region.sum())
            target_mean, _ = windowed.colour_stats(target_frames[first:end], region)
            chunk["target_colour_distance"] = float(np.linalg.norm(
                windowed.colour_stats(frames[first:end], region)[0] - target_mean))
        span = slice(plan.starts[k], plan.starts[k] + plan.valid(k))  # the whole window: enough frames to correlate
        enough = plan.valid(k) >= 16
        sync, lag = lipsync.lipsync_score(mouth[span], envelope[span], max_lag=5) if enough else (np.nan, 0)
        truth, _ = lipsync.lipsync_score(truth_mouth[span], envelope[span], max_lag=5) if enough else (np.nan, 0)
        rel = sync / truth if np.isfinite(sync) and np.isfinite(truth) and truth > 0.05 else np.nan
        spread = float(np.std(truth_mouth[span]))
        chunk.update(lipsync=_finite(sync), lipsync_truth=_finite(truth), lipsync_relative=_finite(rel),
                     lipsync_lag_ms=float(lag * FRAME_MS),
                     mouth_amplitude=_finite(np.std(mouth[span]) / spread) if spread > 0 else None)
        chunks.append(chunk)
    inp = len(audio) if input_audio_samples is None else int(input_audio_samples)
    report = {"duration": {"input_audio_s": inp / schema.SAMPLE_RATE, "video_s": n / schema.FPS,
                           "output_audio_s": len(audio) / schema.SAMPLE_RATE, "frames": n,
                           "exact_match": len(audio) == n * schema.SAMPLES_PER_FRAME,
                           "tail_lost_s": max(0.0, inp / schema.SAMPLE_RATE - n / schema.FPS)}}
    report["colour"] = relative_drift([c["colour_distance"] for c in chunks])
    if ref_code is not None:
        report["identity"] = relative_drift([c["identity_distance"] for c in chunks])
    if target_frames is not None:
        report["target"] = relative_drift([c["target_distance"] for c in chunks])
        report["target_colour"] = relative_drift([c["target_colour_distance"] for c in chunks])
    syncs = [c["lipsync"] for c in chunks if c["lipsync"] is not None]
    relative = [c["lipsync_relative"] for c in chunks if c["lipsync_relative"] is not None]
    # per-chunk curves need windows of >= 16 frames; the whole utterance's scores are always given
    report["lipsync"] = {"whole": _finite(lipsync.lipsync_score(mouth, envelope)[0]),
                         "truth_whole": _finite(lipsync.lipsync_score(truth_mouth, envelope)[0]),
                         **(relative_drift(syncs) if syncs else {})}
    report["lipsync_relative"] = relative_drift(relative) if relative else None
    amplitude = [c["mouth_amplitude"] for c in chunks if c["mouth_amplitude"] is not None]
    report["mouth_amplitude"] = {"whole": _finite(np.std(mouth) / np.std(truth_mouth)) if np.std(truth_mouth) > 0
                                 else None, **(relative_drift(amplitude) if amplitude else {})}
    report["seams_pixels"] = windowed.seam_jumps(windowed.frame_motion(frames, region), plan)
    if latent_motion is not None:
        report["seams_latents"] = windowed.seam_jumps(np.asarray(latent_motion), plan)
    for key in ("seams_pixels", "seams_latents"):
        if key in report:
            report[key]["seam_ok"] = bool(report[key]["seam_p95"] <= report[key]["within_pair_p95"])
    report["chunks"] = chunks
    return report


def write_report(report: dict, out_dir: str | Path) -> dict:
    """``drift.json`` and ``drift.png`` in ``out_dir``; the report gains ``plot`` (the PNG's path or None)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "drift.json").write_text(json.dumps(report, indent=1))
    report["plot"] = plot_drift(report, out / "drift.png")
    return report


def plot_drift(report: dict, path: str | Path) -> str | None:
    """Per-chunk curves (colour, identity, lip-sync relative to the truth, seam jumps vs the within-chunk p95) as
    one PNG; with target frames, their colour distance and pixel error in place of the portrait-based two."""
    from avatarjax.atomic import atomic_file
    from avatarjax.train.plots import _pyplot

    plt = _pyplot()
    if plt is None:
        return None
    chunks = report["chunks"]
    t = [c["first_frame"] / schema.FPS for c in chunks]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    panels = [("colour_distance", "colour distance to the portrait (RGB)"),
              ("identity_distance", "identity distance (relative code distance)"),
              ("lipsync_relative", f"lip-sync / ground truth's ({report.get('mouth_signal', 'mouth')})")]
    if chunks and "target_distance" in chunks[0]:  # like-for-like curves: expression and pose factored out
        panels[:2] = [("target_colour_distance", "colour distance to the target face (RGB)"),
                      ("target_distance", "pixel error against the target face")]
    for ax, (key, title) in zip(axes.flat, panels):
        values = [np.nan if c.get(key) is None else c[key] for c in chunks]
        ax.plot(t, values, marker="o", ms=3)
        if key == "lipsync_relative":  # the raw scores, for reference
            ax.plot(t, [np.nan if c["lipsync"] is None else c["lipsync"] for c in chunks], color="0.6", lw=0.8,
                    label="raw score")
        first = values[0] if values else np.nan
        if np.isfinite(first) and first != 0:
            ax.axhspan(first - 0.1 * abs(first), first + 0.1 * abs(first), color="g", alpha=0.12,
                       label="first chunk +-10%")
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("chunk start (s)")
    seams = report["seams_pixels"]
    ax = axes.flat[3]
    ax.plot(t[1:], seams["per_seam"][:max(len(t) - 1, 0)], marker="o", ms=3, label="seam jump")
    ax.axhline(seams["within_p95"], color="r", ls="--", label="within-chunk p95 (one transition)")
    ax.axhline(seams["within_pair_p95"], color="m", ls=":", label="within-chunk p95 (larger of two, like a seam)")
    ax.set_title("seam jumps (face-region pixel change / frame)", fontsize=10)
    ax.set_xlabel("seam time (s)")
    ax.legend(fontsize=8)
    fig.suptitle(f"{report['duration']['video_s']:.1f} s, {report.get('windows', '?')} windows, RTF "
                 f"{report.get('real_time_factor', '?')}", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return str(path.absolute())
