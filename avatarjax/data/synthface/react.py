"""Export synthface states in the REACT (PFLPosNet) layout (numpy only).

REACT represents a facial reaction per frame by 58 3DMM-like coefficients (52 expression + 3 rotation +
3 translation) and 25 attributes (15 AU occurrences + valence + arousal + 8 expression probabilities).

Expression coefficients: REACT's 52 FaceVerse expression coefficients have no published semantics, so the 52 slots
here are ARKit-named blendshapes (:data:`EXPRESSION_NAMES`, the standard ARKit order) filled by a fixed linear map
(:data:`EXPRESSION_MAP`) from 12 features of the state (:data:`FEATURES`: the 10 AU channels, the 4 gaze channels,
jaw_open, smile+ = max(smile, 0), smile- = max(-smile, 0), lip_stretch, pucker). Slots we do not drive are zero.
This is a layout-compatible stand-in with a documented meaning, not a FaceVerse fit.
"""

from __future__ import annotations

import numpy as np

from . import dynamics as D
from . import schema as S

IX = S.INDEX

#: The 52 expression slots (ARKit blendshape order).
EXPRESSION_NAMES = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight",
    "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight",
    "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight",
    "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker",
    "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight", "tongueOut",
)
NUM_EXPRESSION = 52
#: Input features of the linear map (order of the map's columns).
FEATURES = S.AU_CHANNELS + S.GAZE_CHANNELS + ("jaw_open", "smile_pos", "smile_neg", "lip_stretch", "pucker")

#: slot -> {feature: weight}. Gaze: looking to the subject's left turns the left eye outward and the right eye
#: inward (eyeLookOutLeft / eyeLookInRight = gaze_left), and vice versa.
EXPRESSION_MAP: dict[str, dict[str, float]] = {
    "browDownLeft": {"au4": 1.0}, "browDownRight": {"au4": 1.0},
    "browInnerUp": {"au1_l": 0.5, "au1_r": 0.5},
    "browOuterUpLeft": {"au2_l": 1.0}, "browOuterUpRight": {"au2_r": 1.0},
    "cheekSquintLeft": {"au6": 1.0}, "cheekSquintRight": {"au6": 1.0},
    "eyeBlinkLeft": {"au45_l": 1.0}, "eyeBlinkRight": {"au45_r": 1.0},
    "eyeLookDownLeft": {"gaze_down": 1.0}, "eyeLookDownRight": {"gaze_down": 1.0},
    "eyeLookInLeft": {"gaze_right": 1.0}, "eyeLookInRight": {"gaze_left": 1.0},
    "eyeLookOutLeft": {"gaze_left": 1.0}, "eyeLookOutRight": {"gaze_right": 1.0},
    "eyeLookUpLeft": {"gaze_up": 1.0}, "eyeLookUpRight": {"gaze_up": 1.0},
    "eyeSquintLeft": {"au7": 1.0}, "eyeSquintRight": {"au7": 1.0},
    "eyeWideLeft": {"au5": 1.0}, "eyeWideRight": {"au5": 1.0},
    "jawOpen": {"jaw_open": 1.0},
    "mouthFrownLeft": {"smile_neg": 1.0}, "mouthFrownRight": {"smile_neg": 1.0},
    "mouthFunnel": {"pucker": 0.5},
    "mouthLowerDownLeft": {"jaw_open": 0.3}, "mouthLowerDownRight": {"jaw_open": 0.3},
    "mouthPucker": {"pucker": 1.0},
    "mouthSmileLeft": {"smile_pos": 1.0}, "mouthSmileRight": {"smile_pos": 1.0},
    "mouthStretchLeft": {"lip_stretch": 1.0}, "mouthStretchRight": {"lip_stretch": 1.0},
}


def _matrix() -> np.ndarray:
    W = np.zeros((NUM_EXPRESSION, len(FEATURES)), np.float32)
    for slot, weights in EXPRESSION_MAP.items():
        for feat, w in weights.items():
            W[EXPRESSION_NAMES.index(slot), FEATURES.index(feat)] = w
    return W


#: The fixed linear map, float32 ``[52, len(FEATURES)]``: ``coeffs = features @ EXPRESSION_MATRIX.T``.
EXPRESSION_MATRIX = _matrix()


def state_features(state: np.ndarray) -> np.ndarray:
    """The :data:`FEATURES` of a state, float32 ``[..., 19]``."""
    s = np.asarray(state, np.float32)
    sm = s[..., IX["smile"]]
    return np.concatenate([s[..., S.AU_SLICE], s[..., S.GAZE_SLICE], s[..., IX["jaw_open"]][..., None],
                           np.maximum(sm, 0.0)[..., None], np.maximum(-sm, 0.0)[..., None],
                           s[..., IX["lip_stretch"]][..., None], s[..., IX["pucker"]][..., None]], axis=-1)


def to_react_coefficients(state: np.ndarray) -> np.ndarray:
    """REACT 3DMM-like coefficients, float32 ``[..., T, 58]``.

    - ``[:52]`` expression: ``state_features(state) @ EXPRESSION_MATRIX.T`` (ARKit-named slots, see
      :data:`EXPRESSION_MAP`; unmapped slots 0), each in [0, 1];
    - ``[52:55]`` rotation in RADIANS, order (pitch, yaw, roll) with our signs (pitch > 0 up, yaw > 0 towards the
      subject's left, roll > 0 towards the subject's left shoulder);
    - ``[55:58]`` translation (tx, ty, depth) unchanged (frame fractions, scale - 1).
    """
    s = np.asarray(state, np.float32)
    expr = state_features(s) @ EXPRESSION_MATRIX.T
    rot = np.deg2rad(np.stack([s[..., IX["pitch"]], s[..., IX["yaw"]], s[..., IX["roll"]]], axis=-1))
    return np.concatenate([expr, rot, s[..., S.TRANSLATION_SLICE]], axis=-1).astype(np.float32)


#: The 15 REACT AU occurrences, in order.
REACT_AUS = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU9", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24",
             "AU25", "AU26")
#: The 8 REACT expression probabilities (AffectNet order) and the ``schema.EMOTIONS`` index of each.
REACT_EXPRESSIONS = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
REACT_TO_EMOTION = tuple(S.EMOTIONS.index(e) for e in
                         ("neutral", "happy", "sad", "surprised", "fear", "disgusted", "angry", "contempt"))
#: Column names of the 25 attributes (the header of a REACT emotion CSV).
ATTRIBUTE_NAMES = REACT_AUS + ("valence", "arousal") + REACT_EXPRESSIONS
#: AUs we do not model -> {emotion: weight}; occurrence = (emotion_probs @ weights) >= 0.5 (FACS prototypes:
#: disgust 9+10(+17), contempt 14, sadness 17, anger 23+24(+17)).
UNMODELED_AUS: dict[str, dict[str, float]] = {
    "AU9": {"disgusted": 1.0}, "AU10": {"disgusted": 1.0}, "AU14": {"contempt": 1.0},
    "AU17": {"sad": 1.0, "disgusted": 0.5, "angry": 0.5}, "AU23": {"angry": 1.0}, "AU24": {"angry": 1.0},
}
#: Thresholds of the mouth-derived AUs: AU12 smile > 0.15, AU15 smile < -0.15, AU25 (lips part) jaw_open > 0.1,
#: AU26 (jaw drop) jaw_open > 0.35.
MOUTH_AU_THRESHOLDS = {"AU12": 0.15, "AU15": 0.15, "AU25": 0.1, "AU26": 0.35}
#: (valence, arousal) per emotion (circumplex model), in [-1, 1].
EMOTION_VA = {"neutral": (0.0, 0.0), "happy": (0.8, 0.5), "sad": (-0.7, -0.4), "angry": (-0.6, 0.8),
              "surprised": (0.2, 0.8), "fear": (-0.7, 0.7), "disgusted": (-0.7, 0.3), "contempt": (-0.5, 0.1)}
#: State-derived expression probabilities: softmax(-score / EXPRESSION_TEMPERATURE), see
#: :func:`expression_probs_from_state`.
EXPRESSION_TEMPERATURE = 0.05
NEUTRAL_SCORE = 0.35
STRENGTH_WEIGHT = 0.5


def _emotion_probs(emotion_probs, shape_t: tuple[int, ...]) -> np.ndarray:
    p = np.asarray(emotion_probs, np.float32)
    if p.shape[-1] != len(S.EMOTIONS):
        raise ValueError(f"emotion_probs must end in {len(S.EMOTIONS)} (schema.EMOTIONS order), got {p.shape}")
    return np.broadcast_to(p, shape_t + (len(S.EMOTIONS),))


def expression_probs_from_state(state: np.ndarray) -> np.ndarray:
    """Emotion probabilities from the face alone, float32 ``[..., T, 8]`` in ``schema.EMOTIONS`` order.

    Features ``f``: AU1, AU2 (L/R averaged), AU4, AU5, AU6, AU7, smile, lip_stretch (the speech-driven jaw,
    blinks, gaze and pose are ignored). For each non-neutral emotion with full-intensity pattern ``p`` (same
    features), the strength ``a = clip(<f, p> / |p|^2, 0, 1)`` and the score ``|f - a p|^2 / |p|^2 +
    0.5 (1 - a)^2`` (relative misfit + missing strength); neutral scores 0.35. Probabilities are
    ``softmax(-score / 0.05)``: a neutral face gives neutral (every expression scores 0.5), a clean emotion at
    intensity 1 (a ~ 0.45, score ~ 0.15) gives that emotion.
    """
    s = np.asarray(state, np.float32)

    def feats(x):
        return np.stack([0.5 * (x[..., IX["au1_l"]] + x[..., IX["au1_r"]]),
                         0.5 * (x[..., IX["au2_l"]] + x[..., IX["au2_r"]]), x[..., IX["au4"]], x[..., IX["au5"]],
                         x[..., IX["au6"]], x[..., IX["au7"]], x[..., IX["smile"]], x[..., IX["lip_stretch"]]], -1)

    f = feats(s)
    res = []
    for e in S.EMOTIONS:
        if e == "neutral":
            res.append(np.full(f.shape[:-1], NEUTRAL_SCORE, np.float32))
            continue
        p = feats(D.emotion_pattern(e, 3))
        pp = float(p @ p)
        a = np.clip((f @ p) / pp, 0.0, 1.0)
        res.append(np.sum((f - a[..., None] * p) ** 2, axis=-1) / pp + STRENGTH_WEIGHT * (1.0 - a) ** 2)
    r = -np.stack(res, -1) / EXPRESSION_TEMPERATURE
    r -= r.max(-1, keepdims=True)
    e = np.exp(r)
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def to_react_attributes(state: np.ndarray, emotion_probs: np.ndarray | None = None) -> np.ndarray:
    """REACT attributes, float32 ``[..., T, 25]``.

    ``emotion_probs``: optional per-frame (``[..., T, 8]``) or per-clip (``[8]``) probabilities in
    ``schema.EMOTIONS`` order (e.g. :func:`emotion_probs_from_clip`).

    - ``[0:15]`` AU occurrences (0/1) in :data:`REACT_AUS` order. AU1 / AU2 = max(left, right) > threshold, AU4,
      AU6, AU7 from their channels, all with ``dynamics.AU_THRESHOLDS``; AU12 smile > 0.15, AU15 smile < -0.15;
      AU25 jaw_open > 0.1, AU26 jaw_open > 0.35 (:data:`MOUTH_AU_THRESHOLDS`); AU9, AU10, AU14, AU17, AU23, AU24
      (not modelled) = ``emotion_probs @ UNMODELED_AUS weights >= 0.5`` when ``emotion_probs`` is given, else 0.
    - ``[15]`` valence = clip(sum_e p_e V_e + 0.4 smile, -1, 1); ``[16]`` arousal = clip(sum_e p_e A_e +
      0.3 AU5 + 0.2 jaw_open - 0.3 min(au45_l, au45_r), -1, 1) (drooping lids lower arousal), using
      :data:`EMOTION_VA` (the emotion terms are 0 without ``emotion_probs``).
    - ``[17:25]`` 8 expression probabilities in :data:`REACT_EXPRESSIONS` (AffectNet) order: ``emotion_probs``
      reordered when given, else :func:`expression_probs_from_state`.
    """
    s = np.asarray(state, np.float32)
    shape_t = s.shape[:-1]
    thr = D.AU_THRESHOLDS
    ch = lambda n: s[..., IX[n]]  # noqa: E731
    occ = {
        "AU1": np.maximum(ch("au1_l"), ch("au1_r")) > thr[0], "AU2": np.maximum(ch("au2_l"), ch("au2_r")) > thr[2],
        "AU4": ch("au4") > thr[4], "AU6": ch("au6") > thr[6], "AU7": ch("au7") > thr[7],
        "AU12": ch("smile") > MOUTH_AU_THRESHOLDS["AU12"], "AU15": ch("smile") < -MOUTH_AU_THRESHOLDS["AU15"],
        "AU25": ch("jaw_open") > MOUTH_AU_THRESHOLDS["AU25"], "AU26": ch("jaw_open") > MOUTH_AU_THRESHOLDS["AU26"],
    }
    probs = None if emotion_probs is None else _emotion_probs(emotion_probs, shape_t)
    for au, weights in UNMODELED_AUS.items():
        if probs is None:
            occ[au] = np.zeros(shape_t, bool)
        else:
            w = np.array([weights.get(e, 0.0) for e in S.EMOTIONS], np.float32)
            occ[au] = probs @ w >= 0.5
    aus = np.stack([occ[a] for a in REACT_AUS], -1).astype(np.float32)
    va = np.array([EMOTION_VA[e] for e in S.EMOTIONS], np.float32)
    base = np.zeros(shape_t + (2,), np.float32) if probs is None else probs @ va
    lid = np.minimum(ch("au45_l"), ch("au45_r"))
    valence = np.clip(base[..., 0] + 0.4 * ch("smile"), -1.0, 1.0)
    arousal = np.clip(base[..., 1] + 0.3 * ch("au5") + 0.2 * ch("jaw_open") - 0.3 * lid, -1.0, 1.0)
    expr = (expression_probs_from_state(s) if probs is None else probs)[..., list(REACT_TO_EMOTION)]
    return np.concatenate([aus, valence[..., None], arousal[..., None], expr], -1).astype(np.float32)


def emotion_probs_from_clip(clip) -> np.ndarray:
    """Per-frame emotion probabilities ``[T, 8]`` (``schema.EMOTIONS`` order) from a clip's ground truth.

    Emotion clips: the expression envelope ``w(t)`` (``events['expression']`` timing) gives ``p[emotion] = w`` and
    ``p[neutral] = 1 - w``; other clips: all neutral.
    """
    T = clip.num_frames
    p = np.zeros((T, len(S.EMOTIONS)), np.float32)
    p[:, 0] = 1.0
    timing = clip.events.get("expression")
    if clip.emotion > 0 and timing is not None:
        w = D.timing_envelope(T, timing)
        p[:, 0] = 1.0 - w
        p[:, clip.emotion] = w
    return p
