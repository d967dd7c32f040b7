"""Anti-aliased synthface frames drawn from the face model of ``geometry.py``, plus keypoint overlays.

``render_frames(identity, state, size)`` draws, back to front: background, hair, neck, face (the contour and
forehead polygon), nose, brows, eyes, mouth. Everything is filled with OpenCV ``LINE_AA`` polygons and ellipses
at ``SHIFT`` = 4 bits of sub-pixel precision, so features move smoothly by fractions of a pixel at 64 px. An eye
is composited in its own small window: sclera, iris and pupil are drawn onto a patch that is blended through the
anti-aliased lid-opening mask, so the iris only shows between the lids and a closed eye (AU45 = 1) shows skin.
Geometry is computed for all frames at once; the per-frame loop only issues the drawing calls.

Pixel convention: the keypoint (u, v) is at continuous pixel position (u * size, v * size); OpenCV's integer
coordinates are pixel centres, so it is drawn at (u * size - 0.5, v * size - 0.5). The pixel that contains
a keypoint is ``floor(keypoint * size)`` (``keypoint_pixels``).

Colours: the identity's skin, hair, iris and background, and fixed sclera, pupil and mouth-interior colours.
"""

from __future__ import annotations

import dataclasses
import math
import os

import cv2
import numpy as np

from avatarjax.data.synthface import geometry as geo
from avatarjax.data.synthface.identity import Identity

SHIFT = 4  # sub-pixel bits of the OpenCV drawing calls
_ONE = 1 << SHIFT
SIZES = (64, 128, 256)  # tested sizes (any size >= 16 works)
PUPIL_TO_IRIS = 0.45
MASK_SUPERSAMPLE = 4  # eye-opening masks are filled at this many times the resolution, then box-filtered
MIN_OPENING = 1e-4    # head-frame units: a lid opening below this is drawn closed (no sclera at all)
SCLERA_RGB = (0.94, 0.93, 0.90)
PUPIL_RGB = (0.03, 0.03, 0.04)
MOUTH_RGB = (0.24, 0.07, 0.09)
_LIP_TINT = np.array([0.78, 0.30, 0.33])


@dataclasses.dataclass(frozen=True)
class Palette:
    """Drawing colours as RGB tuples of whole numbers in [0, 255] (floats, as OpenCV takes them)."""

    background: tuple[float, ...]
    hair: tuple[float, ...]
    skin: tuple[float, ...]
    neck: tuple[float, ...]
    nose_bridge: tuple[float, ...]
    nose: tuple[float, ...]
    brow: tuple[float, ...]
    lash: tuple[float, ...]
    lip: tuple[float, ...]
    seam: tuple[float, ...]
    mouth: tuple[float, ...]
    sclera: tuple[float, ...]
    iris: tuple[float, ...]
    pupil: tuple[float, ...]


def _c(rgb) -> tuple[float, ...]:
    """RGB in [0, 1] to whole numbers in [0, 255] (OpenCV rounds colours, numpy assignment truncates: agree)."""
    return tuple(float(x) for x in np.clip(np.round(np.asarray(rgb, np.float64) * 255.0), 0.0, 255.0))


def palette(identity: Identity) -> Palette:
    """The colours ``identity`` is drawn with."""
    skin, hair = np.asarray(identity.skin_rgb), np.asarray(identity.hair_rgb)
    lip = 0.72 * skin + 0.28 * _LIP_TINT
    return Palette(background=_c(identity.background_rgb), hair=_c(hair), skin=_c(skin), neck=_c(0.82 * skin),
                   nose_bridge=_c(0.85 * skin), nose=_c(0.72 * skin), brow=_c(0.7 * hair), lash=_c(0.35 * skin), lip=_c(0.88 * lip),
                   seam=_c(0.55 * lip), mouth=_c(MOUTH_RGB), sclera=_c(SCLERA_RGB), iris=_c(identity.iris_rgb),
                   pupil=_c(PUPIL_RGB))


# ------------------------------------------------------------------------------------- vectorised geometry
def keypoint_pixels(keypoints: np.ndarray, size: int) -> np.ndarray:
    """``int [..., 2]`` (column, row) of the pixel containing each normalised keypoint ``[..., 2]``."""
    return np.floor(np.asarray(keypoints, np.float64) * size).astype(np.int64)


def _fixed(points: np.ndarray, size: int) -> np.ndarray:
    """Normalised points ``[..., 2]`` to OpenCV fixed-point pixel-centre coordinates (int32)."""
    return np.round((points * size - 0.5) * _ONE).astype(np.int32)


def _iris_ellipses(pixels: np.ndarray, ring: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre ``[T, 2]``, semi-axes ``[T, 2]`` and angle ``[T]`` (degrees) of the ellipse through 8 ring points.

    The ring is the orthographic image of a circle sampled at equal angles, so its covariance is A A^T / 2 for
    the ellipse's axis matrix A: the semi-axes are sqrt(2 * eigenvalues).
    """
    pts = pixels[:, ring]
    centre = pts.mean(1)
    d = pts - centre[:, None]
    cxx, cyy, cxy = (d[..., 0] ** 2).mean(1), (d[..., 1] ** 2).mean(1), (d[..., 0] * d[..., 1]).mean(1)
    mean, diff = 0.5 * (cxx + cyy), np.sqrt((0.5 * (cxx - cyy)) ** 2 + cxy ** 2)
    axes = np.sqrt(2.0 * np.maximum(np.stack([mean + diff, mean - diff], -1), 0.0))
    angle = np.degrees(0.5 * np.arctan2(2 * cxy, cxx - cyy))
    return centre, axes, angle


def _eye_windows(pixels: np.ndarray, outline: np.ndarray, size: int) -> np.ndarray:
    """``int [T, 4]`` x0, y0, x1, y1 (exclusive) of a window around a lid outline, clipped to the frame."""
    pts = pixels[:, outline]
    lo = np.floor(pts.min(1)).astype(np.int64) - 1
    hi = np.ceil(pts.max(1)).astype(np.int64) + 2
    return np.clip(np.concatenate([lo, hi], -1), 0, size)


@dataclasses.dataclass
class _FrameGeometry:
    """Per-frame drawing inputs for all frames (fixed-point polygons and eye windows)."""

    hair: np.ndarray
    neck: np.ndarray
    face: np.ndarray
    nose_bridge: np.ndarray
    nose_base: np.ndarray
    brows: np.ndarray          # [T, 2, 12, 2]
    lids: np.ndarray           # [T, 2, 16, 2]
    upper_lids: np.ndarray     # [T, 2, 9, 2]
    windows: np.ndarray        # [T, 2, 4]
    open: np.ndarray           # [T, 2] bool: the lids are apart
    iris: np.ndarray           # [T, 2, 5]: centre x, y, semi-axes a, b (pixels), angle (degrees)
    pupil: np.ndarray          # [T, 2, 5]
    lips: np.ndarray
    mouth: np.ndarray
    seam: np.ndarray

    def __post_init__(self):  # OpenCV wants C-contiguous point arrays; fancy indexing may not give them
        for field in dataclasses.fields(self):
            setattr(self, field.name, np.ascontiguousarray(getattr(self, field.name)))


def _lids_apart(identity: Identity, state: np.ndarray) -> np.ndarray:
    """``bool [T, 2]``: whether each eye's upper lid is above its lower lid anywhere (by ``MIN_OPENING``)."""
    return geo.lid_gaps(geo.head_points(identity, state)).max(-1) > MIN_OPENING


def _frame_geometry(identity: Identity, state: np.ndarray, size: int) -> _FrameGeometry:
    points = geo.render_points(identity, state)            # [T, P, 2] normalised
    pixels = points * size - 0.5                            # OpenCV pixel-centre coordinates
    fixed = _fixed(points, size)
    r = geo.RENDER
    eyes = ((geo.LEFT_EYE_OUTLINE, geo.LEFT_UPPER_LID, geo.LEFT_IRIS, geo.LEFT_PUPIL),
            (geo.RIGHT_EYE_OUTLINE, geo.RIGHT_UPPER_LID, geo.RIGHT_IRIS, geo.RIGHT_PUPIL))
    iris, pupil, windows = [], [], []
    for outline, _, ring, centre_index in eyes:
        centre, axes, angle = _iris_ellipses(pixels, ring)
        iris.append(np.concatenate([centre, axes, angle[:, None]], -1))
        pupil.append(np.concatenate([pixels[:, centre_index], PUPIL_TO_IRIS * axes, angle[:, None]], -1))
        windows.append(_eye_windows(pixels, outline, size))
    brow = [np.concatenate([fixed[:, r[f"{s}_brow_upper"]], fixed[:, r[f"{s}_brow_lower"][::-1]]], 1)
            for s in ("left", "right")]
    return _FrameGeometry(
        hair=fixed[:, r["hair"]], neck=fixed[:, r["neck"]],
        face=np.concatenate([fixed[:, geo.CONTOUR], fixed[:, r["forehead"]]], 1),
        nose_bridge=fixed[:, r["nose"][[0, 1]]], nose_base=fixed[:, r["nose"][[3, 2, 4]]],
        brows=np.stack(brow, 1),
        lids=np.stack([fixed[:, e[0]] for e in eyes], 1), upper_lids=np.stack([fixed[:, e[1]] for e in eyes], 1),
        windows=np.stack(windows, 1), open=_lids_apart(identity, state),
        iris=np.stack(iris, 1), pupil=np.stack(pupil, 1),
        lips=fixed[:, geo.MOUTH_OUTER], mouth=fixed[:, geo.MOUTH_INNER],
        seam=fixed[:, np.r_[geo.MOUTH_INNER_CORNERS[0], geo.UPPER_LIP_INNER, geo.MOUTH_INNER_CORNERS[1]]])


# ------------------------------------------------------------------------------------------ per-frame drawing
def _line_width(size: int) -> int:
    return max(1, round(size / 128))


def _ellipse(img: np.ndarray, params: np.ndarray, offset: tuple[int, int], colour) -> None:
    """Filled anti-aliased ellipse; params = centre x, y, semi-axes a, b (pixels), angle (degrees)."""
    cx, cy, a, b, angle = params
    centre = (int(round((cx - offset[0]) * _ONE)), int(round((cy - offset[1]) * _ONE)))
    axes = (max(int(round(a * _ONE)), 1), max(int(round(b * _ONE)), 1))
    cv2.ellipse(img, centre, axes, float(angle), 0, 360, colour, -1, cv2.LINE_AA, SHIFT)


def _lid_mask(lid: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """``uint8 [y1 - y0, x1 - x0]`` coverage of the lid opening, by ``MASK_SUPERSAMPLE``-fold supersampling.

    An anti-aliased polygon fill always paints its edges, so a thin opening would show as a full-strength line;
    filling at k-fold resolution and box-filtering down gives the true area coverage to within ~1/k pixel.
    """
    k = MASK_SUPERSAMPLE
    origin = np.array([x0 * _ONE, y0 * _ONE], np.int32)
    big = (lid - origin + _ONE // 2) * k - _ONE // 2  # pixel-centre coordinates at k-fold resolution
    mask = np.zeros(((y1 - y0) * k, (x1 - x0) * k), np.uint8)
    cv2.fillPoly(mask, [big.astype(np.int32)], 255, cv2.LINE_8, SHIFT)
    return cv2.resize(mask, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)


def _draw_eye(img: np.ndarray, g: _FrameGeometry, t: int, e: int, pal: Palette) -> None:
    """Sclera, iris and pupil blended into the frame through the anti-aliased lid-opening mask."""
    x0, y0, x1, y1 = (int(v) for v in g.windows[t, e])
    if x1 - x0 < 1 or y1 - y0 < 1 or not g.open[t, e]:
        return
    mask = _lid_mask(g.lids[t, e], x0, y0, x1, y1)
    patch = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
    patch[:] = pal.sclera
    _ellipse(patch, g.iris[t, e], (x0, y0), pal.iris)
    _ellipse(patch, g.pupil[t, e], (x0, y0), pal.pupil)
    alpha = mask[..., None].astype(np.uint16)
    window = img[y0:y1, x0:x1]
    window[:] = (patch * alpha + window * (255 - alpha) + 127) // 255


def _draw_frame(img: np.ndarray, g: _FrameGeometry, t: int, pal: Palette, width: int) -> None:
    aa, s = cv2.LINE_AA, SHIFT
    img[:] = pal.background
    cv2.fillPoly(img, [g.hair[t]], pal.hair, aa, s)
    cv2.fillPoly(img, [g.neck[t]], pal.neck, aa, s)
    cv2.fillPoly(img, [g.face[t]], pal.skin, aa, s)
    cv2.polylines(img, [g.nose_bridge[t]], False, pal.nose_bridge, width, aa, s)
    cv2.polylines(img, [g.nose_base[t]], False, pal.nose, width, aa, s)
    cv2.fillPoly(img, [g.brows[t, 0], g.brows[t, 1]], pal.brow, aa, s)
    for e in range(2):
        _draw_eye(img, g, t, e, pal)
    cv2.polylines(img, [g.upper_lids[t, 0], g.upper_lids[t, 1]], False, pal.lash, width, aa, s)
    cv2.fillPoly(img, [g.lips[t]], pal.lip, aa, s)
    cv2.fillPoly(img, [g.mouth[t]], pal.mouth, aa, s)
    cv2.polylines(img, [g.seam[t]], False, pal.seam, width, aa, s)


def render_frames(identity: Identity, state: np.ndarray, size: int = 64) -> np.ndarray:
    """``uint8 [T, size, size, 3]`` RGB frames for states ``[T, 24]`` (``[size, size, 3]`` for one ``[24]``)."""
    if int(size) != size or size < 16:
        raise ValueError(f"size must be an integer >= 16, got {size!r}")
    state = np.asarray(state, np.float32)
    single = state.ndim == 1
    frames = state[None] if single else state
    g = _frame_geometry(identity, frames, size)
    pal, width = palette(identity), _line_width(size)
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for t in range(len(frames)):
        _draw_frame(out[t], g, t, pal, width)
    return out[0] if single else out


# ----------------------------------------------------------------------------------------- overlays / sheets
def draw_keypoints(frames: np.ndarray, keypoints: np.ndarray, color=(255, 40, 40),
                   radius: float | None = None) -> np.ndarray:
    """Copies of ``frames [T, H, W, 3]`` (or ``[H, W, 3]``) with normalised ``keypoints [T, K, 2]`` drawn as dots.

    ``radius`` is in pixels (default ``max(0.6, W / 256)``); dots are anti-aliased and sub-pixel placed.
    """
    frames = np.asarray(frames)
    single = frames.ndim == 3
    out = np.array(frames[None] if single else frames, np.uint8, copy=True)
    kps = np.asarray(keypoints, np.float64)
    kps = kps[None] if kps.ndim == 2 else kps
    if len(kps) != len(out):
        raise ValueError(f"{len(out)} frames but keypoints for {len(kps)}")
    h, w = out.shape[1:3]
    r = int(round((radius if radius is not None else max(0.6, w / 256)) * _ONE))
    pts = np.round((kps * np.array([w, h]) - 0.5) * _ONE).astype(np.int64)
    colour = tuple(float(c) for c in color)
    for t in range(len(out)):
        for x, y in pts[t]:
            cv2.circle(out[t], (int(x), int(y)), r, colour, -1, cv2.LINE_AA, SHIFT)
    return out[0] if single else out


def contact_sheet(frames: np.ndarray, keypoints: np.ndarray | None = None, columns: int = 8,
                  path: str | os.PathLike | None = None, upscale: int | None = None,
                  color=(255, 40, 40)) -> np.ndarray:
    """``uint8 [rows * (h + 2) + 2, columns * (w + 2) + 2, 3]`` RGB grid of ``frames [N, H, W, 3]``.

    Frames are enlarged by ``upscale`` (nearest neighbour; default: to at least 256 px) and, when ``keypoints
    [N, K, 2]`` are given, overlaid with dots so one can check that they sit on the drawn features. Writes a PNG
    to ``path`` when given.
    """
    frames = np.asarray(frames, np.uint8)
    if frames.ndim != 4 or not len(frames):
        raise ValueError(f"a contact sheet needs frames [N, H, W, 3] with N >= 1, got {frames.shape}")
    n, h, w = frames.shape[:3]
    factor = upscale or max(1, math.ceil(256 / max(h, w)))
    if factor > 1:
        frames = np.repeat(np.repeat(frames, factor, 1), factor, 2)
    if keypoints is not None:
        frames = draw_keypoints(frames, keypoints, color)
    h, w = h * factor, w * factor
    rows = max(1, math.ceil(n / columns))
    sheet = np.full((rows * (h + 2) + 2, min(columns, n) * (w + 2) + 2, 3), 128, np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        sheet[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + c * (w + 2): 2 + c * (w + 2) + w] = frames[i]
    if path is not None and not cv2.imwrite(os.fspath(path), np.ascontiguousarray(sheet[..., ::-1])):
        raise OSError(f"could not write {path}")
    return sheet
