"""Stage 1 evaluation on synthface's 12 EMH-like categories, with the paper's Stage 1 ablations (Table 3).

For every category and clip: a ground-truth synthface clip (held-out evaluation identity, talking), whose 17
controls map to ground-truth keypoints through the identity's basis (no head translation: Stage 1 does not
control it). Stage 1 runs on (label, duration, the clip's first-frame head pose, the identity's basis). Metrics
compare Stage 1's keypoints with the ground truth's:

- AU-F1 (micro over clips and AUs) and AU-Temp (DTW, ``eval.au.au_temp`` with the category's target AU set
  ``templates.target_aus``; contempt has none in synthface and is left out of AU-Temp) on AU trajectories read
  back from the keypoints (``keypoints.recover_controls``), thresholds ``dynamics.AU_THRESHOLDS``;
- Eye-LMD over the 62 eye-region keypoints (normalised by the true inter-ocular distance);
- physiological critic-rule violations of the final control sequences.

Variants (:data:`VARIANTS`): ``direct`` (a label-to-keypoints ridge regressor on the library: label one-hot x
cosine time basis -> residual deformation; no planning, no retrieval), ``rule_retrieval`` (random prototypes of
the category stitched, no planner / critic), ``planner_only`` (Agent 1's targets interpolated), ``no_critic``
(Agent 1 + Agent 2) and ``full``.

``python -m avatarjax.planning.evaluate [--clips N] [--library DIR] [--out FILE.json]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from avatarjax.atomic import atomic_file
from avatarjax.data.synthface import clips as CL
from avatarjax.data.synthface import dynamics as D
from avatarjax.eval.au import au_f1_dataset, au_temp
from avatarjax.eval.landmarks import eye_lmd
from avatarjax.planning import agents as A
from avatarjax.planning import controls as C
from avatarjax.planning import critic as CR
from avatarjax.planning import keypoints as KP
from avatarjax.planning import prototypes as P
from avatarjax.planning import templates as TPL

VARIANTS = {"direct": None, "rule_retrieval": {"use_planner": False, "use_critic": False},
            "planner_only": {"use_composer": False, "use_critic": False}, "no_critic": {"use_critic": False},
            "full": {}}


class DirectRegressor:
    """Label -> keypoints without planning: ridge regression from (label one-hot x cosine basis of normalised
    time) to the residual deformation ``k_t - b`` of the library's prototypes; predictions add the target
    identity's baseline. It learns each category's mean trajectory, hence smooth and blink-free outputs."""

    def __init__(self, lib: P.PrototypeLibrary, num_basis: int = 6, ridge: float = 1e-2):
        self.labels = sorted(lib.index)
        self.num_basis = num_basis
        n_frames = lib.info.get("num_frames", lib.window)
        starts = np.array([s["start"] for s in lib.sources])
        t = (starts[:, None] + np.arange(lib.window)[None]) / max(n_frames - 1, 1)  # [N, L]
        x = self._features(lib.labels[:, None].repeat(lib.window, 1).reshape(-1), t.reshape(-1))
        y = lib.residuals(np.arange(len(lib))).reshape(len(x), -1)
        self.coef = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y)

    def _features(self, labels: np.ndarray, t: np.ndarray) -> np.ndarray:
        onehot = (np.asarray(labels)[:, None] == np.array(self.labels)[None]).astype(np.float64)
        cos = np.cos(np.pi * np.arange(self.num_basis)[None] * np.asarray(t)[:, None])
        return (onehot[:, :, None] * cos[:, None, :]).reshape(len(t), -1)

    def predict(self, label: str, num_frames: int, basis: KP.KeypointBasis) -> np.ndarray:
        t = np.arange(num_frames) / max(num_frames - 1, 1)
        resid = (self._features(np.full(num_frames, label), t) @ self.coef).reshape(num_frames, -1, 2)
        baseline = KP.controls_to_keypoints(np.zeros((1, C.NUM_CHANNELS)), basis)[0]
        return (baseline + resid).astype(np.float32)


def _ground_truth(cat: str, i: int, seed: int, identity: int, num_frames: int) -> np.ndarray:
    clip = CL.generate_clip(CL.clip_seed(seed, 7919 * (1 + TPL.EVAL_CATEGORIES.index(cat)) + i), identity=identity,
                            label=cat, num_frames=num_frames, split="eval")
    return C.controls_from_state(clip.state)


def evaluate(*, library: P.PrototypeLibrary | None = None, categories=TPL.EVAL_CATEGORIES, clips_per_category: int = 3,
             num_frames: int = 100, seed: int = 1, variants=tuple(VARIANTS), instruction: str | None = None) -> dict:
    """Run the Stage 1 evaluation; returns ``{"variants": {name: metrics}, "per_category": ..., "setup": ...}``."""
    t0 = time.time()
    lib = library if library is not None else P.build_library()
    t_lib = time.time() - t0
    idents = P.eval_identities(clips_per_category)
    direct = DirectRegressor(lib) if "direct" in variants else None
    thr = D.AU_THRESHOLDS
    store = {v: {"pred": [], "true": [], "temp": [], "lmd": [], "viol": {r: 0 for r in CR.RULES}, "cat": []}
             for v in variants}
    rounds = []
    from tqdm.auto import tqdm

    for cat in tqdm(categories, desc="stage 1 eval", unit="category", disable=None):
        target = [C.INDEX[a] for a in TPL.target_aus(cat)]
        for i in range(clips_per_category):
            basis = KP.synthface_basis(idents[i])
            truth = _ground_truth(cat, i, seed, idents[i], num_frames)
            true_kp = KP.controls_to_keypoints(truth, basis)
            for v in variants:
                if v == "direct":
                    kp = direct.predict(cat, num_frames, basis)
                    ctrl = KP.recover_controls(kp, basis)["controls"]
                    plan = None
                else:
                    cfg = A.Stage1Config(library=lib, basis=basis, seed=seed * 100 + i, **VARIANTS[v])
                    plan, seq, log = A.compile_label(cat, instruction, num_frames / C.FPS, truth[0, C.POSE_SLICE],
                                                     cfg, library=lib)
                    kp = KP.controls_to_keypoints(seq.values, basis)
                    ctrl = KP.recover_controls(kp, basis)["controls"]
                    if v == "full":
                        rounds.append(len(log["rounds"]))
                s = store[v]
                s["pred"].append(ctrl[:, C.AU_SLICE])
                s["true"].append(truth[:, C.AU_SLICE])
                s["cat"].append(cat)
                if target:
                    s["temp"].append(au_temp(ctrl[:, C.AU_SLICE], truth[:, C.AU_SLICE], target))
                s["lmd"].append(eye_lmd(kp, true_kp, KP.LEFT_EYE, KP.RIGHT_EYE, points=np.arange(KP.NUM_KEYPOINTS)))
                for rule, n in CR.count_violations(C.ControlSequence(ctrl), plan).items():
                    s["viol"][rule] += n
    out = {"variants": {}, "per_category": {}}
    for v, s in store.items():
        f1 = au_f1_dataset(s["pred"], s["true"], thr)
        out["variants"][v] = {"au_f1": round(f1.micro.f1, 4), "au_temp": round(float(np.mean(s["temp"])), 4),
                              "eye_lmd": round(float(np.mean(s["lmd"])), 4),
                              "violations": int(sum(s["viol"].values())), "violations_by_rule": s["viol"]}
        cats = np.array(s["cat"])
        for cat in categories:
            sel = np.flatnonzero(cats == cat)
            f1c = au_f1_dataset([s["pred"][j] for j in sel], [s["true"][j] for j in sel], thr).micro.f1
            out["per_category"].setdefault(cat, {})[v] = {"au_f1": round(f1c, 3),
                                                          "eye_lmd": round(float(np.mean([s["lmd"][j] for j in sel])), 4)}
    out["setup"] = {"categories": list(categories), "clips_per_category": clips_per_category, "num_frames": num_frames,
                    "seed": seed, "eval_identities": idents, "library_size": len(lib), "library_s": round(t_lib, 2),
                    "library_recovery_error": lib.info.get("recovery_error"),
                    "full_mean_rounds": round(float(np.mean(rounds)), 2) if rounds else None,
                    "seconds": round(time.time() - t0, 2)}
    return out


def format_table(result: dict) -> str:
    rows = ["variant          AU-F1   AU-Temp  Eye-LMD  violations"]
    for v, m in result["variants"].items():
        rows.append(f"{v:<16} {m['au_f1']:.4f}  {m['au_temp']:.4f}   {m['eye_lmd']:.4f}   {m['violations']}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m avatarjax.planning.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=3, help="evaluation clips per category")
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--library", help="a saved prototype library directory (default: build the synthface one)")
    p.add_argument("--out", help="write the result JSON here")
    ns = p.parse_args(argv)
    lib = P.PrototypeLibrary.load(ns.library) if ns.library else None
    result = evaluate(library=lib, clips_per_category=ns.clips, num_frames=ns.frames, seed=ns.seed)
    print(format_table(result))
    print(json.dumps(result["setup"]))
    if ns.out:
        with atomic_file(ns.out) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
