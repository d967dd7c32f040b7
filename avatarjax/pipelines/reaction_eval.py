"""PFLPosNet evaluation on synthface dyadic sessions, shaped like the paper's Tables 1, 2 and 4.

Rows: the reaction generator trained on floating-crop data (no head translation), on PFL-crop data, and the PFL
generator's output smoothed online by PosNet. Every row generates ``reactions`` reactions online for the same
held-out (eval split) sessions with the same seeds, so PFL vs PFL + PosNet differ only by PosNet.

Columns, on the 58 REACT coefficients (52 expression + 3 rotation + 3 translation):
- smoothness of the pose (the 6 pose dims): ``seam_jump`` (mean |step| into the first frame of each generator
  segment, PosNet's L_connect as a metric), ``max_seam_jump``, ``within_step`` (mean |step| inside segments,
  L_sm1), ``jitter`` (mean |second difference|), ``motion_smoothness`` (VBench-style midpoint interpolation
  score, ``eval.smoothness.motion_smoothness``, with the real reactions' mean pose range as the scale of every row);
- ``translation_kept``: std over time of the generated head translation / the real reactions' (PFL truth): 0
  for the floating crop, whose data has no translation (its generator's output there is set to 0: a floating
  pipeline has no translation to render);
- REACT metrics (``eval.react``) against the session's real reactions (of the row's own crop): FRCorr, FRDist
  (DTW with the 52 expression dims weighted 1/52 and the 6 pose dims 1/6, i.e. a per-group mean, in place of
  the challenge's 25-d AU/VA/expression groups), FRDiv, FRVar, FRSyn (undefined correlations omitted).

PosNet leaves the 52 expression dims bit-identical, so any expression-only metric (the challenge's 25-d emotion
attributes are functions of expression) is unchanged by construction; the 58-d numbers show its effect on pose.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from avatarjax.eval import react as react_metrics, smoothness

POSE = slice(52, 58)
TRANSLATION = slice(55, 58)
COEFF_GROUPS = ((0, 52, 1 / 52), (52, 58, 1 / 6))


def _react_scores(pred: np.ndarray, real: np.ndarray, speaker: np.ndarray) -> dict[str, float]:
    k = pred.shape[1]
    return {"FRCorr": react_metrics.fr_corr(pred, list(real)) / k,
            "FRDist": react_metrics.fr_dist(pred, list(real), groups=COEFF_GROUPS) / k,
            "FRDiv": react_metrics.fr_div(pred) if k > 1 else float("nan"),
            "FRVar": react_metrics.fr_var(pred),
            "FRSyn": react_metrics.fr_syn(pred, speaker, nan_policy="omit")}


def evaluate_table(pfl: tuple, floating: tuple | None, smoother, *, sessions: int = 8, reactions: int = 10,
                   num_steps: int | None = None, num_frames: int | None = None, seed: int = 0) -> dict:
    """Rows ``floating`` (when given), ``pfl`` and ``pfl+posnet`` (when ``smoother``); ``pfl`` / ``floating`` are
    ``(model, cfg)`` of reaction generators (``data.crop`` "pfl" / "floating"). FRCorr and FRDist are per
    generated reaction (the challenge's sum over the K predictions divided by K)."""
    from avatarjax.pipelines.reaction_generate import segment_length
    from avatarjax.train.objectives.reaction import generated_sessions

    segment = segment_length(pfl[1])
    if smoother is not None and smoother.segment != segment:
        raise ValueError(f"PosNet corrects {smoother.segment}-frame segments but the generator makes {segment}")
    outputs: dict[str, list] = {}
    reals: dict[str, list] = {}
    speakers: dict[str, list] = {}
    truth_translation = []
    timing: dict[str, float] = {}
    for name, gen in (("floating", floating), ("pfl", pfl)):
        if gen is None:
            continue
        model, cfg = gen
        start = time.perf_counter()
        generated = generated_sessions(model, cfg, "eval", sessions, num_reactions=reactions, seed=seed,
                                       num_steps=num_steps, num_frames=num_frames)
        for _, raw, pred, _ in tqdm(generated, total=sessions, desc=f"react eval ({name})", unit="session",
                                    disable=None):
            if cfg.data.crop == "floating":  # the floating pipeline has no translation channel to render
                pred[..., TRANSLATION] = 0.0
            t = pred.shape[1]
            outputs.setdefault(name, []).append(pred)
            reals.setdefault(name, []).append(raw["listeners"][:, :t])
            speakers.setdefault(name, []).append(raw["speaker"][:t])
            if name == "pfl":
                truth_translation.append(raw["listeners"][:, :t, TRANSLATION])
        timing[name] = time.perf_counter() - start
    if smoother is not None:
        start = time.perf_counter()
        outputs["pfl+posnet"] = [smoother.smooth(p, pose=POSE) for p in outputs["pfl"]]
        timing["posnet"] = time.perf_counter() - start
        reals["pfl+posnet"], speakers["pfl+posnet"] = reals["pfl"], speakers["pfl"]
    true_std = float(np.mean(np.std(np.stack(truth_translation), axis=-2)))
    real_pose = np.stack(reals["pfl"])[..., POSE]
    pose_scale = float(np.mean(real_pose.max(axis=-2) - real_pose.min(axis=-2)))  # one scale for every row
    rows = {}
    for name, preds in outputs.items():
        pred, real, speaker = np.stack(preds), np.stack(reals[name]), np.stack(speakers[name])
        rows[name] = {**smoothness.segment_scores(pred[..., POSE].reshape(-1, pred.shape[-2], 6), segment, pose_scale), **_react_scores(pred, real, speaker),
                      "translation_kept": float(np.mean(np.std(pred[..., TRANSLATION], axis=-2))) / true_std}
    report = {"rows": rows, "sessions": sessions, "reactions": reactions, "segment": segment,
              "frames": int(outputs["pfl"][0].shape[1]), "seconds": timing}
    if "pfl+posnet" in rows:
        before, after = rows["pfl"], rows["pfl+posnet"]
        report["posnet"] = {
            "seam_jump_reduction": before["seam_jump"] / max(after["seam_jump"], 1e-12),
            "FRCorr_rel_change": abs(after["FRCorr"] - before["FRCorr"]) / max(abs(before["FRCorr"]), 1e-12),
            "FRDist_rel_change": abs(after["FRDist"] - before["FRDist"]) / max(abs(before["FRDist"]), 1e-12),
            "expression_identical": bool(all(np.array_equal(a[..., :52], b[..., :52]) for a, b in
                                             zip(outputs["pfl"], outputs["pfl+posnet"]))),
            "ms_per_video_second": timing["posnet"] * 1e3 / (sessions * report["frames"] / 25.0)}
    return report
