"""synthface: a procedural talking-face world whose ground truth is known exactly.

Identities, per-frame face state at 25 fps (the CogPortrait 17-channel eye/brow/head control space plus mouth
and 3-D head translation), synthetic speech whose envelope drives the jaw, instructions, anti-aliased rendering
with keypoints, dyadic speaker/listener sessions and an exact keypoint reader. See ``schema.py`` for the layout.
"""
