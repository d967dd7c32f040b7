"""The synthface face model: 3-D keypoints, linear expression basis, eyeball gaze, rigid head pose, projection.

Coordinates
-----------
The head frame is face-centred with unit scale: X points to the subject's left (image right for a frontal face),
Y up, Z out of the face towards the camera. The face spans about 2 units from chin (Y = -face_height) to hairline
(Y = 0.95 face_height). Image coordinates are normalised to [0, 1]^2 with x right and y down; the point (u, v)
lies at continuous pixel position (u * W, v * H), i.e. inside pixel (floor(u * W), floor(v * H)).

A state ``[T, 24]`` (layout in ``schema.py``) maps to keypoints in four steps, all vectorised over frames:

1. Expression, LINEAR: ``P = neutral + sum_c state[c] * basis[c]`` over the 14 ``LINEAR_CHANNELS`` (10 AU +
   4 mouth); ``basis(identity)`` is ``[14, 99, 3]``. The basis is built so that the 14 channels stay
   identifiable from 2-D keypoints at any pose (see ``tests/unit/test_synthface_render.py``): the brow AUs
   differ in their inner/outer profile and AU4 also pulls the brows together; AU5 lifts the upper lid radially
   (with a sideways component), AU45 moves the upper lid straight down onto the neutral lower lid (at 1.0 the
   lid is closed), AU7 lifts the lower lid (inner-weighted) and lowers the upper lid a little, AU6 lifts the
   lower lid (outer-weighted), bulges the cheeks and lowers the outer brow; jaw_open drops the lower lip, the
   lip corners and the chin contour; smile moves the lip corners up and out (negative: down and in);
   lip_stretch scales the mouth horizontally and thins it; pucker narrows (quadratically towards the corners),
   rounds and protrudes the lips. No channel moves the eye corners or the top two contour points per side,
   so those 8 points (``STABLE``) carry the rigid pose alone.
2. Gaze: the 9 iris/pupil points of each eye sit on an eyeball of radius ``0.9 * eye_size``; the eyeball turns
   by the horizontal/vertical gaze angles of ``schema.gaze_angles`` (``Ry(h) @ Rx(v)``). Lids do not follow
   gaze, so the expression map stays exactly linear.
3. Rigid: ``R = Ry(yaw) @ Rx(pitch) @ Rz(roll)`` (degrees). yaw > 0 turns the nose to the subject's left (image
   right), pitch > 0 turns it up, roll > 0 tilts the top of the head to the subject's left (image right), which
   is a clockwise in-plane rotation in the image.
4. Weak perspective (orthographic) projection: ``u = 0.5 + tx + IMAGE_SCALE * (1 + depth) * X'``,
   ``v = 0.5 + ty - IMAGE_SCALE * (1 + depth) * Y'``. tx > 0 moves the head right, ty > 0 moves it down.
   At depth 0 the chin-to-hairline height is 57-63% of the frame.

Keypoint layout (99 = 62 eye-region + 20 mouth + 17 contour; "left"/"right" are the subject's)
-----------------------------------------------------------------------------------------------
====== ===================================================================================================
0-24   left eye: 0-8 upper lid from the inner corner (0) to the outer corner (8); 9-15 lower lid interior from
       outer to inner (so 0-15 is the closed lid outline); 16-23 iris ring, starting at the temporal side and
       turning upwards (18 = top, 20 = nasal, 22 = bottom); 24 pupil centre
25-49  right eye, same order (25 inner corner, 33 outer corner, 49 pupil)
50-55  left brow, inner to outer
56-61  right brow, inner to outer
62-73  outer lip: 62 right corner (image left), 63-67 upper lip left to right in the image, 68 left corner,
       69-73 lower lip right to left in the image
74-81  inner lip: 74 right inner corner, 75-77 upper, 78 left inner corner, 79-81 lower (same directions)
82-98  face contour from the right ear level (image left) down through the chin (90) to the left ear level
====== ===================================================================================================

``MIRROR`` is the index permutation of a horizontal flip (left <-> right features).
The renderer also uses render-only points after the 99 keypoints (forehead, hair, nose, neck, brow edges):
``render_points`` returns all of them; ``RENDER`` names their slices.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from avatarjax.data.synthface import schema
from avatarjax.data.synthface.identity import Identity

IMAGE_SCALE = 0.31  # frame fraction per head-frame unit at depth 0
NUM_KEYPOINTS = schema.NUM_KEYPOINTS  # 99

# ---------------------------------------------------------------------------------------------- index layout
EYE_POINTS = 25  # per eye: 9 upper lid, 7 lower lid, 8 iris ring, 1 pupil
BROW_POINTS = 6
LID_POINTS = 16
IRIS_POINTS = 8


def _eye(start: int) -> dict[str, np.ndarray]:
    idx = np.arange(start, start + EYE_POINTS)
    return {"eye": idx, "upper": idx[0:9], "lower": idx[9:16], "outline": idx[0:16], "iris": idx[16:24],
            "pupil": idx[24], "corners": idx[[0, 8]]}


_L, _R = _eye(0), _eye(EYE_POINTS)
LEFT_EYE, RIGHT_EYE = _L["eye"], _R["eye"]                      # [25] each
LEFT_UPPER_LID, RIGHT_UPPER_LID = _L["upper"], _R["upper"]      # [9], corners included
LEFT_LOWER_LID, RIGHT_LOWER_LID = _L["lower"], _R["lower"]      # [7], interior, outer -> inner
LEFT_EYE_OUTLINE, RIGHT_EYE_OUTLINE = _L["outline"], _R["outline"]  # [16] closed lid polygon
LEFT_IRIS, RIGHT_IRIS = _L["iris"], _R["iris"]                  # [8]
LEFT_PUPIL, RIGHT_PUPIL = int(_L["pupil"]), int(_R["pupil"])    # 24, 49
LEFT_EYE_CORNERS, RIGHT_EYE_CORNERS = _L["corners"], _R["corners"]  # [inner, outer]
PUPILS = np.array([LEFT_PUPIL, RIGHT_PUPIL])
IRISES = np.concatenate([LEFT_IRIS, RIGHT_IRIS])
EYE_CORNERS = np.concatenate([LEFT_EYE_CORNERS, RIGHT_EYE_CORNERS])  # left inner, left outer, right inner, right outer
# The points gaze moves (and nothing else moves): per eye the 8 iris ring points then the pupil.
LEFT_EYEBALL = np.append(LEFT_IRIS, LEFT_PUPIL)
RIGHT_EYEBALL = np.append(RIGHT_IRIS, RIGHT_PUPIL)
EYEBALL = np.concatenate([LEFT_EYEBALL, RIGHT_EYEBALL])  # [18]
LEFT_BROW = np.arange(50, 56)
RIGHT_BROW = np.arange(56, 62)
BROWS = np.concatenate([LEFT_BROW, RIGHT_BROW])
EYE_REGION = np.arange(0, schema.NUM_EYE_REGION_KEYPOINTS)      # [62], the CogPortrait keypoints
MOUTH = np.arange(62, 82)
MOUTH_OUTER = np.arange(62, 74)
MOUTH_INNER = np.arange(74, 82)
UPPER_LIP_OUTER, LOWER_LIP_OUTER = np.arange(63, 68), np.arange(69, 74)
UPPER_LIP_INNER, LOWER_LIP_INNER = np.arange(75, 78), np.arange(79, 82)
MOUTH_CORNERS = np.array([62, 68])        # outer corners, right then left
MOUTH_INNER_CORNERS = np.array([74, 78])
CONTOUR = np.arange(82, 99)
CHIN = 90
STABLE = np.concatenate([EYE_CORNERS, CONTOUR[[0, 1, 15, 16]]])  # moved by no expression channel
NON_EYEBALL = np.setdiff1d(np.arange(NUM_KEYPOINTS), EYEBALL)    # [81], moved by expression, not by gaze


def _mirror() -> np.ndarray:
    m = np.arange(NUM_KEYPOINTS)
    m[LEFT_EYE], m[RIGHT_EYE] = RIGHT_EYE, LEFT_EYE
    m[LEFT_BROW], m[RIGHT_BROW] = RIGHT_BROW, LEFT_BROW
    m[62], m[68], m[74], m[78] = 68, 62, 78, 74
    for run in (UPPER_LIP_OUTER, LOWER_LIP_OUTER, UPPER_LIP_INNER, LOWER_LIP_INNER, CONTOUR):
        m[run] = run[::-1]
    return m


MIRROR = _mirror()

# Render-only points after the keypoints (head frame, carried through the same expression/pose maps).
_FOREHEAD_POINTS, _HAIR_POINTS, _NOSE_POINTS, _NECK_POINTS = 13, 23, 5, 4
_starts = np.cumsum([NUM_KEYPOINTS, _FOREHEAD_POINTS, _HAIR_POINTS, _NOSE_POINTS, _NECK_POINTS, 4 * BROW_POINTS])
RENDER = {
    "forehead": np.arange(_starts[0], _starts[1]),  # subject's left ear level, over the hairline, to the right
    "hair": np.arange(_starts[1], _starts[2]),
    "nose": np.arange(_starts[2], _starts[3]),      # bridge, tip, base centre, right nostril, left nostril
    "neck": np.arange(_starts[3], _starts[4]),
    "left_brow_upper": np.arange(_starts[4], _starts[4] + 6),
    "left_brow_lower": np.arange(_starts[4] + 6, _starts[4] + 12),
    "right_brow_upper": np.arange(_starts[4] + 12, _starts[4] + 18),
    "right_brow_lower": np.arange(_starts[4] + 18, _starts[4] + 24),
}
NUM_RENDER_POINTS = int(_starts[-1])

# --------------------------------------------------------------------------------------------- channel maps
LINEAR_CHANNELS = schema.AU_CHANNELS + schema.MOUTH_CHANNELS  # 14, in basis order
LINEAR_STATE_INDEX = np.array([schema.INDEX[name] for name in LINEAR_CHANNELS])
NUM_LINEAR = len(LINEAR_CHANNELS)
LINEAR_LOW = schema.LOW[LINEAR_STATE_INDEX]
LINEAR_HIGH = schema.HIGH[LINEAR_STATE_INDEX]
_C = {name: i for i, name in enumerate(LINEAR_CHANNELS)}

for _name, _value in list(globals().items()):  # index constants are shared: make them read-only
    for _array in (_value.values() if isinstance(_value, dict) else [_value]):
        if _name.isupper() and isinstance(_array, np.ndarray):
            _array.setflags(write=False)

IRIS_TO_EYEBALL = 0.5  # iris radius / eyeball radius (the iris ring sits 30 degrees off the gaze axis)
EYEBALL_TO_EYE = 0.9   # eyeball radius / eye_size
JAW_DROP = 0.30        # lower-lip drop at jaw_open = 1 (head-frame units)


@dataclasses.dataclass(frozen=True, eq=False)
class FaceModel:
    """The face model of one identity (arrays are read-only).

    points: ``[NUM_RENDER_POINTS, 3]`` neutral head-frame points (the 99 keypoints, then render-only points).
    basis: ``[14, NUM_RENDER_POINTS, 3]`` displacement per unit of each ``LINEAR_CHANNELS`` channel.
    eye_centres: ``[2, 3]`` eyeball centres (left, right). eyeball_radius: scalar.
    iris_directions: ``[2, 9, 3]`` unit vectors from each eyeball centre to its 8 iris ring points and its pupil
    at zero gaze (the order of ``LEFT_EYEBALL`` / ``RIGHT_EYEBALL``).
    """

    points: np.ndarray
    basis: np.ndarray
    eye_centres: np.ndarray
    eyeball_radius: float
    iris_directions: np.ndarray


# ------------------------------------------------------------------------------------------ neutral geometry
def _eye_y(identity: Identity) -> float:
    return 0.13 * identity.face_height


def _mouth_y(identity: Identity) -> float:
    return -0.56 * identity.face_height


def _surface_z(identity: Identity, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Depth of the face surface at head-frame (x, y): an ellipsoid cap, 0.62 deep at the centre."""
    r2 = (np.asarray(x) / (1.05 * identity.face_width)) ** 2 + (np.asarray(y) / (1.25 * identity.face_height)) ** 2
    return 0.62 * np.sqrt(np.maximum(1.0 - r2, 0.0))


def _lid_params() -> np.ndarray:
    """``[9]`` lid parameter t from the inner corner (0) to the outer corner (1)."""
    return np.linspace(0.0, 1.0, 9)


def _lid_curves(identity: Identity, side: float) -> tuple[np.ndarray, np.ndarray]:
    """``([9, 3], [9, 3])`` upper and lower lid at the 9 lid parameters (corners shared) for one eye."""
    w, t = identity.eye_size, _lid_params()
    x = side * (identity.eye_spacing - w + 2 * w * t)
    corner_y = _eye_y(identity) + 0.08 * w * (t - 0.5)
    bump = np.sin(np.pi * t)
    upper_y = corner_y + 0.42 * w * bump ** 0.8
    lower_y = corner_y - 0.36 * w * bump ** 0.9
    z = _surface_z(identity, x, corner_y) + 0.02
    return np.stack([x, upper_y, z + 0.01 * bump], -1), np.stack([x, lower_y, z], -1)


def _eyeball(identity: Identity, side: float) -> tuple[np.ndarray, np.ndarray]:
    """Eyeball centre ``[3]`` and the 9 unit directions ``[9, 3]`` (iris ring from the temporal side, pupil)."""
    r = EYEBALL_TO_EYE * identity.eye_size
    x, y = side * identity.eye_spacing, _eye_y(identity)
    centre = np.array([x, y, _surface_z(identity, x, y) + 0.02 - r])
    sin_a = IRIS_TO_EYEBALL
    cos_a = np.sqrt(1 - sin_a ** 2)
    theta = np.arange(IRIS_POINTS) * (2 * np.pi / IRIS_POINTS)
    ring = np.stack([side * sin_a * np.cos(theta), sin_a * np.sin(theta), np.full(IRIS_POINTS, cos_a)], -1)
    return centre, np.concatenate([ring, [[0.0, 0.0, 1.0]]])


def _eye_points(identity: Identity, side: float) -> np.ndarray:
    """``[25, 3]`` one eye in keypoint order (upper lid, lower lid interior outer->inner, iris ring, pupil)."""
    upper, lower = _lid_curves(identity, side)
    centre, dirs = _eyeball(identity, side)
    eyeball = centre + EYEBALL_TO_EYE * identity.eye_size * dirs
    return np.concatenate([upper, lower[7:0:-1], eyeball])


def _brow_params() -> np.ndarray:
    return np.linspace(0.0, 1.0, BROW_POINTS)


def _brow_points(identity: Identity, side: float) -> np.ndarray:
    """``[6, 3]`` one brow from the inner to the outer end."""
    w, t = identity.eye_size, _brow_params()
    x = side * (identity.eye_spacing - 0.95 * w + 2.25 * w * t)
    arch = (0.08 + 0.45 * identity.brow_arch) * w
    y = _eye_y(identity) + 1.3 * w + arch * np.sin(np.pi * t ** 0.75) - 0.15 * w * t
    return np.stack([x, y, _surface_z(identity, x, y) + 0.06], -1)


def _brow_edges(identity: Identity, brow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower edges ``[6, 3]`` of a brow: thickness tapering to 55% at the outer end."""
    half = 0.5 * identity.brow_thickness * (1.0 - 0.45 * _brow_params())
    offset = np.stack([np.zeros_like(half), half, np.zeros_like(half)], -1)
    return brow + offset, brow - offset


def _mouth_points(identity: Identity) -> np.ndarray:
    """``[20, 3]`` outer lip (12) then inner lip (8) in keypoint order."""
    mw, ym = identity.mouth_width, _mouth_y(identity)
    j = np.arange(1, 6)
    xu = -mw * np.cos(np.pi * j / 6)  # image left to right
    xl = -xu                          # image right to left
    cupid = 1.0 - 0.18 * np.exp(-(xu / (0.18 * mw)) ** 2)
    yu = ym + 0.30 * mw * (1 - (xu / mw) ** 2) ** 0.7 * cupid
    yl = ym - 0.38 * mw * (1 - (xl / mw) ** 2) ** 0.8
    xi = np.array([-0.45, 0.0, 0.45]) * mw
    yi = ym + 0.03 * mw * (1 - (xi / (0.82 * mw)) ** 2)
    x = np.concatenate([[-mw], xu, [mw], xl, [-0.82 * mw], xi, [0.82 * mw], xi[::-1]])
    y = np.concatenate([[ym], yu, [ym], yl, [ym], yi, [ym], yi[::-1]])
    z = _surface_z(identity, x, y) + np.where(np.arange(20) < 12, 0.06, 0.03)
    return np.stack([x, y, z], -1)


def _contour_angles() -> np.ndarray:
    return np.pi + np.pi * np.arange(schema.NUM_CONTOUR_KEYPOINTS) / (schema.NUM_CONTOUR_KEYPOINTS - 1)


def _contour_points(identity: Identity) -> np.ndarray:
    """``[17, 3]`` jaw line: a squarish superellipse from the right ear level through the chin to the left."""
    theta = _contour_angles()
    c, s = np.cos(theta), np.sin(theta)
    x = identity.face_width * np.sign(c) * np.abs(c) ** (2 / 2.4)
    y = identity.face_height * np.sign(s) * np.abs(s) ** (2 / 2.4)
    z = -0.1 + 0.4 * np.abs(s) ** 1.5
    return np.stack([x, y, z], -1)


def _forehead_points(identity: Identity) -> np.ndarray:
    """``[13, 3]`` upper face outline from the left ear level over the hairline to the right ear level."""
    theta = np.linspace(0.0, np.pi, _FOREHEAD_POINTS + 2)[1:-1]
    x = identity.face_width * np.cos(theta)
    y = 0.95 * identity.face_height * np.sin(theta)
    return np.stack([x, y, -0.1 + 0.3 * np.sin(theta)], -1)


def _hair_points(identity: Identity) -> np.ndarray:
    """``[23, 3]`` hair silhouette behind the head, closed by a straight edge below the ears."""
    theta = np.linspace(-0.3, np.pi + 0.3, _HAIR_POINTS)
    x = 1.1 * identity.face_width * np.cos(theta)
    y = 0.06 + 1.08 * identity.face_height * np.sin(theta)
    return np.stack([x, y, np.full_like(x, -0.3)], -1)


def _nose_points(identity: Identity) -> np.ndarray:
    """``[5, 3]`` bridge top, tip, base centre, right nostril, left nostril."""
    fh, ye = identity.face_height, _eye_y(identity)
    return np.array([[0.0, ye - 0.12 * fh, _surface_z(identity, 0.0, ye) + 0.2],
                     [0.0, -0.24 * fh, 0.95], [0.0, -0.31 * fh, 0.82],
                     [-0.09, -0.27 * fh, 0.74], [0.09, -0.27 * fh, 0.74]])


def _neck_points(identity: Identity) -> np.ndarray:
    """``[4, 3]`` neck quad from under the jaw to below the frame."""
    x0, x1, y0 = 0.42 * identity.face_width, 0.46 * identity.face_width, -0.55 * identity.face_height
    return np.array([[-x0, y0, -0.25], [-x1, -2.4, -0.25], [x1, -2.4, -0.25], [x0, y0, -0.25]])


def _neutral_points(identity: Identity) -> np.ndarray:
    """``[NUM_RENDER_POINTS, 3]`` neutral head-frame points."""
    lb, rb = _brow_points(identity, 1.0), _brow_points(identity, -1.0)
    lbu, lbl = _brow_edges(identity, lb)
    rbu, rbl = _brow_edges(identity, rb)
    parts = [_eye_points(identity, 1.0), _eye_points(identity, -1.0), lb, rb, _mouth_points(identity),
             _contour_points(identity), _forehead_points(identity), _hair_points(identity), _nose_points(identity),
             _neck_points(identity), lbu, lbl, rbu, rbl]
    points = np.concatenate(parts)
    assert points.shape == (NUM_RENDER_POINTS, 3)
    return points


# ------------------------------------------------------------------------------------------ expression basis
def _sides() -> tuple[tuple[float, dict[str, np.ndarray], np.ndarray], ...]:
    return (1.0, _L, LEFT_BROW), (-1.0, _R, RIGHT_BROW)


def _brow_fields(identity: Identity, basis: np.ndarray) -> None:
    """AU1 (inner raise), AU2 (outer raise), AU4 (lower and draw together), AU6's outer-brow lowering."""
    w, t = identity.eye_size, _brow_params()
    for side, _, brow in _sides():
        suffix = "_l" if side > 0 else "_r"
        basis[_C["au1" + suffix], brow, 1] = 0.55 * w * (1 - t) ** 1.3
        basis[_C["au2" + suffix], brow, 1] = 0.55 * w * t ** 1.2
        basis[_C["au2" + suffix], brow, 0] = side * 0.06 * w * t
        basis[_C["au4"], brow, 1] = -0.40 * w * (1 - 0.6 * t)
        basis[_C["au4"], brow, 0] = -side * 0.32 * w * (1 - t) ** 1.5
        basis[_C["au6"], brow, 1] = -0.10 * w * np.maximum(0.0, 2 * t - 1)


def _lid_fields(identity: Identity, basis: np.ndarray, neutral: np.ndarray) -> None:
    """AU5, AU6 and AU7 (both eyes) and AU45 per eye, on the lid interiors (corners never move)."""
    w = identity.eye_size
    t = _lid_params()[1:8]
    bump = np.sin(np.pi * t)
    for side, eye, _ in _sides():
        upper, lower = eye["upper"][1:8], eye["lower"][::-1]  # both ordered by t = 1/8 .. 7/8
        radial = neutral[upper, :2] - np.array([side * identity.eye_spacing, _eye_y(identity)])
        radial /= np.linalg.norm(radial, axis=-1, keepdims=True)
        basis[_C["au5"], upper, :2] = (0.30 * w * bump ** 1.5)[:, None] * radial
        basis[_C["au6"], lower, 1] = 0.26 * w * bump ** 0.8 * (0.5 + t)
        basis[_C["au7"], lower, 1] = 0.28 * w * bump ** 1.2 * (1.3 - 0.6 * t)
        basis[_C["au7"], upper, 1] = -0.12 * w * bump
        basis[_C["au45_l" if side > 0 else "au45_r"], upper] = neutral[lower] - neutral[upper]


def _cheek_fields(basis: np.ndarray, neutral: np.ndarray) -> None:
    """AU6 bulges the cheeks: contour points 2-4 and 12-14 move up and out."""
    for k, weight in zip((2, 3, 4, 12, 13, 14), (0.6, 1.0, 0.6, 0.6, 1.0, 0.6)):
        i = CONTOUR[k]
        basis[_C["au6"], i, 1] = 0.035 * weight
        basis[_C["au6"], i, 0] = 0.02 * weight * np.sign(neutral[i, 0])


def _jaw_field(identity: Identity, basis: np.ndarray, neutral: np.ndarray) -> None:
    """jaw_open: the lower lip drops by JAW_DROP, the corners by ~40% of it, the chin contour with it."""
    j, mw = JAW_DROP, identity.mouth_width
    field = basis[_C["jaw_open"]]
    x = neutral[:, 0]
    field[LOWER_LIP_OUTER, 1] = -j * (0.8 + 0.2 * (1 - (x[LOWER_LIP_OUTER] / mw) ** 2))
    field[LOWER_LIP_OUTER, 2] = -0.08 * j
    field[LOWER_LIP_INNER, 1] = -j * (0.78 + 0.22 * (1 - (x[LOWER_LIP_INNER] / (0.82 * mw)) ** 2))
    field[MOUTH_INNER_CORNERS, 1] = -0.45 * j
    field[MOUTH_CORNERS, 1] = -0.40 * j
    field[MOUTH_CORNERS, 0] = -0.03 * j * np.sign(x[MOUTH_CORNERS])
    weight = np.maximum(0.0, 1 - np.abs(np.arange(schema.NUM_CONTOUR_KEYPOINTS) - 8) / 7) ** 1.3
    field[CONTOUR, 1] = -0.95 * j * weight
    field[CONTOUR, 2] = -0.12 * j * weight


def _lip_fields(identity: Identity, basis: np.ndarray, neutral: np.ndarray) -> None:
    """smile, lip_stretch and pucker on the 20 mouth points."""
    mw, ym = identity.mouth_width, _mouth_y(identity)
    x, y = neutral[MOUTH, 0], neutral[MOUTH, 1] - ym
    rel = x / mw
    inner = np.arange(20) >= 12
    corner_weight = np.minimum(1.0, np.abs(np.where(inner, x / (0.82 * mw), rel))) ** 3
    smile = basis[_C["smile"]]
    smile[MOUTH, 0] = 0.22 * mw * np.sign(x) * corner_weight
    smile[MOUTH, 1] = 0.37 * mw * corner_weight
    stretch = basis[_C["lip_stretch"]]
    stretch[MOUTH, 0] = 0.30 * x
    stretch[MOUTH, 1] = -0.20 * y - 0.02 * mw * corner_weight
    pucker = basis[_C["pucker"]]
    pucker[MOUTH, 0] = -0.38 * mw * rel * np.abs(rel)
    pucker[MOUTH, 1] = 0.35 * y
    pucker[MOUTH, 2] = 0.10 * (1 - np.minimum(rel ** 2, 1.0))


def _copy_to_render_points(basis: np.ndarray) -> None:
    """Brow edges move with their brow point; forehead, hair, nose and neck do not deform."""
    for brow, names in ((LEFT_BROW, ("left_brow_upper", "left_brow_lower")),
                        (RIGHT_BROW, ("right_brow_upper", "right_brow_lower"))):
        for name in names:
            basis[:, RENDER[name]] = basis[:, brow]


def _build_basis(identity: Identity, neutral: np.ndarray) -> np.ndarray:
    basis = np.zeros((NUM_LINEAR, NUM_RENDER_POINTS, 3))
    _brow_fields(identity, basis)
    _lid_fields(identity, basis, neutral)
    _cheek_fields(basis, neutral)
    _jaw_field(identity, basis, neutral)
    _lip_fields(identity, basis, neutral)
    _copy_to_render_points(basis)
    return basis


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, np.float64)
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=1024)
def face_model(identity: Identity) -> FaceModel:
    """The (cached) face model of ``identity``; see ``FaceModel``."""
    neutral = _neutral_points(identity)
    (lc, ld), (rc, rd) = _eyeball(identity, 1.0), _eyeball(identity, -1.0)
    return FaceModel(points=_readonly(neutral), basis=_readonly(_build_basis(identity, neutral)),
                     eye_centres=_readonly(np.stack([lc, rc])),
                     eyeball_radius=EYEBALL_TO_EYE * identity.eye_size,
                     iris_directions=_readonly(np.stack([ld, rd])))


def neutral(identity: Identity) -> np.ndarray:
    """``float32 [99, 3]`` neutral head-frame keypoints of ``identity``."""
    return face_model(identity).points[:NUM_KEYPOINTS].astype(np.float32)


def basis(identity: Identity) -> np.ndarray:
    """``float32 [14, 99, 3]`` keypoint displacement per unit of each ``LINEAR_CHANNELS`` channel."""
    return face_model(identity).basis[:, :NUM_KEYPOINTS].astype(np.float32)


# ------------------------------------------------------------------------------------------------- rotations
def _rx(a: np.ndarray) -> np.ndarray:
    c, s, o, i = np.cos(a), np.sin(a), np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([i, o, o], -1), np.stack([o, c, s], -1), np.stack([o, -s, c], -1)], -2)


def _ry(a: np.ndarray) -> np.ndarray:
    c, s, o, i = np.cos(a), np.sin(a), np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, o, s], -1), np.stack([o, i, o], -1), np.stack([-s, o, c], -1)], -2)


def _rz(a: np.ndarray) -> np.ndarray:
    c, s, o, i = np.cos(a), np.sin(a), np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, s, o], -1), np.stack([-s, c, o], -1), np.stack([o, o, i], -1)], -2)


def _d(rot, a: np.ndarray) -> np.ndarray:
    """Derivative of an elementary rotation: R'(a) = R(a + pi/2) with the fixed axis entry zeroed."""
    d = rot(a + np.pi / 2)
    axis = {_rx: 0, _ry: 1, _rz: 2}[rot]
    d[..., axis, axis] = 0.0
    return d


def rotation_matrix(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """``[..., 3, 3]`` head rotation ``Ry(yaw) @ Rx(pitch) @ Rz(roll)`` for angles in degrees."""
    y, p, r = (np.deg2rad(np.asarray(a, np.float64)) for a in (yaw, pitch, roll))
    return _ry(y) @ _rx(p) @ _rz(r)


def rotation_jacobian(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """``[..., 3, 3, 3]`` derivatives of ``rotation_matrix`` by yaw, pitch, roll (per radian), stacked first."""
    y, p, r = (np.deg2rad(np.asarray(a, np.float64)) for a in (yaw, pitch, roll))
    ry, rx, rz = _ry(y), _rx(p), _rz(r)
    return np.stack([_d(_ry, y) @ rx @ rz, ry @ _d(_rx, p) @ rz, ry @ rx @ _d(_rz, r)], -3)


def angles_from_rotation(rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of ``rotation_matrix``: (yaw, pitch, roll) in degrees for ``[..., 3, 3]`` (|pitch| < 90)."""
    r = np.asarray(rotation, np.float64)
    yaw = np.arctan2(r[..., 0, 2], r[..., 2, 2])
    pitch = np.arcsin(np.clip(r[..., 1, 2], -1.0, 1.0))
    roll = np.arctan2(-r[..., 1, 0], r[..., 1, 1])
    return np.rad2deg(yaw), np.rad2deg(pitch), np.rad2deg(roll)


def gaze_rotation(horizontal: np.ndarray, vertical: np.ndarray) -> np.ndarray:
    """``[..., 3, 3]`` eyeball rotation ``Ry(h) @ Rx(v)`` (degrees; h > 0 subject's left, v > 0 up)."""
    return _ry(np.deg2rad(np.asarray(horizontal, np.float64))) @ _rx(np.deg2rad(np.asarray(vertical, np.float64)))


def gaze_rotation_jacobian(horizontal: np.ndarray, vertical: np.ndarray) -> np.ndarray:
    """``[..., 2, 3, 3]`` derivatives of ``gaze_rotation`` by the horizontal and vertical angle (per radian)."""
    h, v = np.deg2rad(np.asarray(horizontal, np.float64)), np.deg2rad(np.asarray(vertical, np.float64))
    return np.stack([_d(_ry, h) @ _rx(v), _ry(h) @ _d(_rx, v)], -3)


# ------------------------------------------------------------------------------------------- state -> points
def _as_frames(state: np.ndarray) -> tuple[np.ndarray, bool]:
    s = np.asarray(state, np.float64)
    if s.shape[-1:] != (schema.NUM_CHANNELS,) or s.ndim not in (1, 2):
        raise ValueError(f"a state is [T, {schema.NUM_CHANNELS}] or [{schema.NUM_CHANNELS}], got {s.shape}")
    return (s[None], True) if s.ndim == 1 else (s, False)


def eyeball_points(model: FaceModel, horizontal: np.ndarray, vertical: np.ndarray) -> np.ndarray:
    """``[T, 18, 3]`` head-frame iris/pupil points (order of ``EYEBALL``) for gaze angles ``[T]`` in degrees."""
    rot = gaze_rotation(horizontal, vertical)  # [T, 3, 3]
    dirs = np.einsum("tij,ekj->teki", rot, model.iris_directions)  # [T, 2, 9, 3]
    points = model.eye_centres[None, :, None] + model.eyeball_radius * dirs
    return points.reshape(len(points), 18, 3)


def head_points(identity: Identity, state: np.ndarray, count: int = NUM_KEYPOINTS) -> np.ndarray:
    """``[T, count, 3]`` deformed head-frame points (expression + gaze, no pose) for states ``[T, 24]``.

    ``count`` is ``NUM_KEYPOINTS`` for the keypoints or ``NUM_RENDER_POINTS`` to include the render-only points.
    """
    model = face_model(identity)
    frames, _ = _as_frames(state)
    coeffs = frames[:, LINEAR_STATE_INDEX]
    points = model.points[:count] + np.einsum("tc,cpd->tpd", coeffs, model.basis[:, :count])
    h, v = schema.gaze_angles(frames)
    points[:, EYEBALL] = eyeball_points(model, h, v)
    return points


def project(points: np.ndarray, state: np.ndarray) -> np.ndarray:
    """``[T, P, 2]`` image coordinates of head-frame points ``[T, P, 3]`` under the pose/translation of ``[T, 24]``."""
    frames, _ = _as_frames(state)
    yaw, pitch, roll = frames[:, schema.POSE_SLICE].T
    tx, ty, depth = frames[:, schema.TRANSLATION_SLICE].T
    rotated = np.einsum("tij,tpj->tpi", rotation_matrix(yaw, pitch, roll), points)
    scale = (IMAGE_SCALE * (1.0 + depth))[:, None]
    u = 0.5 + tx[:, None] + scale * rotated[..., 0]
    v = 0.5 + ty[:, None] - scale * rotated[..., 1]
    return np.stack([u, v], -1)


def keypoints(identity: Identity, state: np.ndarray) -> np.ndarray:
    """``float32 [T, 99, 2]`` normalised image keypoints (x right, y down) for states ``[T, 24]``.

    A single state ``[24]`` gives ``[99, 2]``.
    """
    frames, single = _as_frames(state)
    out = project(head_points(identity, frames), frames).astype(np.float32)
    return out[0] if single else out


_LID_PAIRS = tuple((eye["upper"][1:8], eye["lower"][::-1]) for eye in (_L, _R))  # interior points, same t


def lid_gaps(points: np.ndarray) -> np.ndarray:
    """``[T, 2, 7]`` upper-minus-lower lid height (head frame) at the 7 interior lid positions of each eye.

    points: head-frame points ``[T, P, 3]`` (P >= 99), e.g. from ``head_points``. 0 everywhere = closed eye.
    """
    return np.stack([points[:, upper, 1] - points[:, lower, 1] for upper, lower in _LID_PAIRS], 1)


def _clamp_lids(points: np.ndarray) -> None:
    """Render-only: an upper lid pushed below its lower lid (e.g. AU45 with AU6/AU7) rests on it instead."""
    for upper, lower in _LID_PAIRS:
        points[:, upper, 1] = np.maximum(points[:, upper, 1], points[:, lower, 1])


def render_points(identity: Identity, state: np.ndarray) -> np.ndarray:
    """``float64 [T, NUM_RENDER_POINTS, 2]`` image coordinates of keypoints and render-only points.

    Same as ``keypoints`` except that lids never cross (the drawn eye closes instead of turning inside out),
    and the neck (``RENDER["neck"]``) does not rotate with the head.
    """
    frames, _ = _as_frames(state)
    points = head_points(identity, frames, NUM_RENDER_POINTS)
    _clamp_lids(points)
    image = project(points, frames)
    upright = frames.copy()
    upright[:, schema.POSE_SLICE] = 0.0  # the neck belongs to the body: it follows translation, not head pose
    image[:, RENDER["neck"]] = project(points[:, RENDER["neck"]], upright)
    return image
