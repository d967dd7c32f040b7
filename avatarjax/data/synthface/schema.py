"""The synthface state layout: channel names, groups, units and ranges; shared by every part of the world.

A face state is a float32 vector of ``NUM_CHANNELS`` per frame (25 fps):

- ``CONTROL_CHANNELS`` (17): the CogPortrait control space, in this order:
  10 AU channels (eyebrow, eyelid, blink; intensities in [0, 1]; ``_l`` / ``_r`` = the subject's left / right),
  4 gaze channels (non-negative magnitudes in [0, 1] of looking left / right / up / down; 1 = 30 degrees;
  eye-in-head angles: during a large gaze shift the head turns partway and the eyes counter-rotate),
  3 head-pose channels (yaw, pitch, roll in degrees; yaw > 0 turns to the subject's left, pitch > 0 looks up,
  roll > 0 tilts the top of the head toward the subject's left shoulder, clockwise in the image).
- ``MOUTH_CHANNELS`` (4): jaw_open [0, 1], smile [-1, 1] (negative = lip-corner depressor, AU15), lip_stretch
  [0, 1] (AU20), pucker [0, 1] (AU18).
- ``TRANSLATION_CHANNELS`` (3): head x, y (fractions of the frame size, 0 = centre; y > 0 moves down, as image
  rows do) and depth (scale factor - 1).

Known limit: there is no one-sided mouth channel, so contempt's unilateral smile is approximated by a weak
symmetric smile plus head pose.
"""

from __future__ import annotations

import numpy as np

FPS = 25
SAMPLE_RATE = 16_000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640

AU_CHANNELS = (
    "au1_l",   # inner brow raiser, left
    "au1_r",   # inner brow raiser, right
    "au2_l",   # outer brow raiser, left
    "au2_r",   # outer brow raiser, right
    "au4",     # brow lowerer
    "au5",     # upper lid raiser
    "au6",     # cheek raiser (lower-lid push, the Duchenne squint)
    "au7",     # lid tightener
    "au45_l",  # eye closure / blink, left
    "au45_r",  # eye closure / blink, right
)
GAZE_CHANNELS = ("gaze_left", "gaze_right", "gaze_up", "gaze_down")
POSE_CHANNELS = ("yaw", "pitch", "roll")
CONTROL_CHANNELS = AU_CHANNELS + GAZE_CHANNELS + POSE_CHANNELS
MOUTH_CHANNELS = ("jaw_open", "smile", "lip_stretch", "pucker")
TRANSLATION_CHANNELS = ("tx", "ty", "depth")
CHANNELS = CONTROL_CHANNELS + MOUTH_CHANNELS + TRANSLATION_CHANNELS
NUM_CONTROL = len(CONTROL_CHANNELS)  # 17
NUM_CHANNELS = len(CHANNELS)  # 24
INDEX = {name: i for i, name in enumerate(CHANNELS)}

AU_SLICE = slice(0, 10)
GAZE_SLICE = slice(10, 14)
POSE_SLICE = slice(14, 17)
CONTROL_SLICE = slice(0, 17)
MOUTH_SLICE = slice(17, 21)
TRANSLATION_SLICE = slice(21, 24)

# Valid range per channel (lo, hi); used for validation, clipping and normalisation.
RANGES = {
    **{name: (0.0, 1.0) for name in AU_CHANNELS + GAZE_CHANNELS},
    "yaw": (-45.0, 45.0), "pitch": (-30.0, 30.0), "roll": (-30.0, 30.0),
    "jaw_open": (0.0, 1.0), "smile": (-1.0, 1.0), "lip_stretch": (0.0, 1.0), "pucker": (0.0, 1.0),
    "tx": (-0.25, 0.25), "ty": (-0.25, 0.25), "depth": (-0.3, 0.3),
}
UNITS = {**{name: "intensity" for name in AU_CHANNELS + MOUTH_CHANNELS}, **{n: "magnitude" for n in GAZE_CHANNELS},
         **{n: "degrees" for n in POSE_CHANNELS}, "tx": "frame fraction", "ty": "frame fraction",
         "depth": "scale - 1"}
LOW = np.array([RANGES[n][0] for n in CHANNELS], np.float32)
HIGH = np.array([RANGES[n][1] for n in CHANNELS], np.float32)
GAZE_DEGREES = 30.0  # a gaze magnitude of 1 rotates the eyes by this much

# The 8 MEAD emotions and 3 intensities.
EMOTIONS = ("neutral", "happy", "sad", "angry", "surprised", "fear", "disgusted", "contempt")
INTENSITIES = (1, 2, 3)
INTENSITY_ADVERBS = {1: "slightly", 2: "moderately", 3: "extremely"}
# Beyond-emotion states (CogPortrait EMH): eye-region patterns rather than overt expressions.
STATES = ("laughter", "cognitive_effort", "drowsiness", "low_arousal_negative", "social_engagement",
          "evasive_response")
# Clip kinds: talking (audio drives the jaw), text-only motion (silence), listening (dyadic listener).
KINDS = ("talking", "motion", "listening")

# Keypoints (see geometry.py for the exact layout): 62 CogPortrait eye-region points, then mouth and contour.
NUM_EYE_REGION_KEYPOINTS = 62
NUM_MOUTH_KEYPOINTS = 20
NUM_CONTOUR_KEYPOINTS = 17
NUM_KEYPOINTS = NUM_EYE_REGION_KEYPOINTS + NUM_MOUTH_KEYPOINTS + NUM_CONTOUR_KEYPOINTS  # 99


def clip_to_range(state: np.ndarray) -> np.ndarray:
    """Clip ``[..., NUM_CHANNELS]`` states into the valid ranges."""
    return np.clip(state, LOW, HIGH).astype(np.float32)


def neutral_state(frames: int = 1) -> np.ndarray:
    """``[frames, NUM_CHANNELS]`` zeros: neutral face, frontal, centred."""
    return np.zeros((frames, NUM_CHANNELS), np.float32)


def gaze_angles(state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal (positive = subject's left) and vertical (positive = up) gaze angles in degrees."""
    g = state[..., GAZE_SLICE]
    return (g[..., 0] - g[..., 1]) * GAZE_DEGREES, (g[..., 2] - g[..., 3]) * GAZE_DEGREES
