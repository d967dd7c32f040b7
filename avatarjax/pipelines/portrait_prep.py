"""Faces in the wild: portrait preparation (detect, crop with a margin, level the eyes, letterbox, resize to the
model's size) and paste-back of the animated face into the original image or video frames.

    prepared = prepare_portrait("photo.jpg", size=256)             # -> PreparedPortrait (.image is the model input)
    frames = pipe.sample(prepared.image, audio, ...).frames         # [T, 256, 256, 3], any avatar pipeline
    video = paste_back(media.read_image("photo.jpg"), frames, prepared)   # [T, H, W, 3] at the photo's size

    crops, prepared = prepare_video(frames, size=256, source="clip.mp4")  # one fixed crop for a whole video
    out = paste_back(frames, animated, prepared)

Geometry: one similarity transform per portrait, ``PreparedPortrait.affine`` (``[2, 3]``, OpenCV convention: pixel
centres at integer coordinates), maps original pixels to crop pixels: translate the face centre to the crop centre,
rotate so the eye line is level (when both eyes are found; no rotation otherwise), scale the square crop of side
``face_side * (1 + 2 * margin)`` to ``size``. Parts of the crop outside the image are filled ("letterboxed") by
repeating the edge pixels (``pad="edge"``) or with black (``pad="black"``), and ``coverage`` marks which crop pixels
show the image; padding lies outside the picture, so paste-back never pastes it. :func:`paste_back` warps each
animated crop with the inverse transform and blends it in through a feathered ellipse (or rectangle); pixels where
the mask is zero are returned unchanged, bit for bit.

Detection is pluggable: ``detector`` is any callable ``rgb uint8 [H, W, 3] -> list[Face]``. The default
:class:`HaarDetector` uses OpenCV's frontal-face Haar cascades (``cv2.data.haarcascades``; alt2, then default) on a
copy resized to 400 px, lightly blurred and histogram-equalised, with a replicated border so faces that fill the
frame are found, and its eye cascade for the eye line. It finds the faces of synthface renders (at 64-512 px, alone
or inside a wider scene). For an image that already is a portrait crop, ``assume_cropped=True`` (the CLI's
``--assume-cropped``) skips detection and uses the whole image, letterboxed to a square. No face: one
:class:`~avatarjax.errors.FaceNotFound` naming the file (or the frames of a video) and the fixes.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from avatarjax import media
from avatarjax.data.preprocess.pfl import frame_ranges
from avatarjax.errors import DataError, FaceNotFound

DEFAULT_MARGIN = 0.45  # face box -> crop side 1.9x the box: synthface portraits frame the face this way


@dataclasses.dataclass(frozen=True)
class Face:
    """A detected face in image pixels: ``box`` = (x, y, width, height) of the face (continuous coordinates, pixel
    ``i`` spans [i, i + 1)); ``eyes`` = the (x, y) centres of the eye on the image's left and the eye on its right,
    or None when they were not found."""

    box: tuple[float, float, float, float]
    eyes: tuple[tuple[float, float], tuple[float, float]] | None = None

    @property
    def centre(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return x + w / 2, y + h / 2

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]


FaceDetector = Callable[[np.ndarray], list[Face]]


class HaarDetector:
    """OpenCV Haar-cascade face detector (with eye detection for alignment): ``rgb uint8 [H, W, 3] -> list[Face]``,
    largest face first.

    ``work_size``: the image's longer side is resized to this before detection (small portraits are enlarged, which
    the cascades need; large photos are shrunk, for speed). ``min_face``: smallest face as a fraction of the shorter
    side of the image. ``neighbours``: OpenCV's ``minNeighbors`` (higher: fewer false faces, more misses).
    """

    CASCADES = ("haarcascade_frontalface_alt2.xml", "haarcascade_frontalface_default.xml")

    def __init__(self, work_size: int = 400, min_face: float = 0.08, neighbours: int = 3, eyes: bool = True):
        self.work_size, self.min_face, self.neighbours, self.find_eyes = work_size, min_face, neighbours, eyes
        self._faces = [self._load(name) for name in self.CASCADES]
        self._eyes = self._load("haarcascade_eye.xml") if eyes else None

    @staticmethod
    def _load(name: str) -> cv2.CascadeClassifier:
        cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, name))
        if cascade.empty():
            raise DataError(f"OpenCV's Haar cascade '{name}' is missing from {cv2.data.haarcascades}: reinstall "
                            f"opencv-python-headless, or pass your own detector=")
        return cascade

    def __call__(self, rgb: np.ndarray) -> list[Face]:
        grey = cv2.cvtColor(_checked_image(rgb, "image"), cv2.COLOR_RGB2GRAY)
        scale = self.work_size / max(grey.shape)
        work = cv2.resize(grey, None, fx=scale, fy=scale,
                          interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        work = cv2.equalizeHist(cv2.GaussianBlur(work, (0, 0), 1.0))
        border = max(work.shape) // 4  # a face filling the frame needs some context around it
        padded = cv2.copyMakeBorder(work, border, border, border, border, cv2.BORDER_REPLICATE)
        smallest = max(20, int(min(work.shape) * self.min_face))
        boxes = []
        for cascade in self._faces:
            boxes = cascade.detectMultiScale(padded, scaleFactor=1.05, minNeighbors=self.neighbours,
                                             minSize=(smallest, smallest))
            if len(boxes):
                break
        faces = []
        for x, y, w, h in sorted((tuple(map(int, b)) for b in boxes), key=lambda b: -b[2] * b[3]):
            eyes = self._eye_pair(padded, x, y, w, h)
            to_image = lambda px, py: ((px - border) / scale, (py - border) / scale)  # noqa: E731
            faces.append(Face(box=(*to_image(x, y), w / scale, h / scale),
                              eyes=None if eyes is None else (to_image(*eyes[0]), to_image(*eyes[1]))))
        return faces

    def _eye_pair(self, grey: np.ndarray, x: int, y: int, w: int, h: int):
        """The centres of the left and right eye inside the face box (work-image pixels), or None."""
        if self._eyes is None:
            return None
        top = grey[y:y + int(0.6 * h), x:x + w]
        found = self._eyes.detectMultiScale(top, scaleFactor=1.05, minNeighbors=3, minSize=(w // 10, w // 10),
                                            maxSize=(w // 3, w // 3))
        left = [e for e in found if e[0] + e[2] / 2 < w / 2 and 0.15 * h < e[1] + e[3] / 2]
        right = [e for e in found if e[0] + e[2] / 2 >= w / 2 and 0.15 * h < e[1] + e[3] / 2]
        if not left or not right:
            return None
        (lx, ly, lw, lh), (rx, ry, rw, rh) = (max(side, key=lambda e: e[2] * e[3]) for side in (left, right))
        pair = ((x + lx + lw / 2, y + ly + lh / 2), (x + rx + rw / 2, y + ry + rh / 2))
        dx, dy = pair[1][0] - pair[0][0], pair[1][1] - pair[0][1]
        if dx < 0.2 * w or abs(math.degrees(math.atan2(dy, dx))) > 30:  # not a plausible pair of eyes
            return None
        return pair


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: compare fields explicitly
class PreparedPortrait:
    """A face crop ready for a model, and everything needed to put it back.

    ``image``: ``uint8 [size, size, 3]`` RGB, the model input. ``affine``: ``float64 [2, 3]`` original pixel (x, y,
    1) -> crop pixel (OpenCV pixel-centre convention). ``coverage``: ``float32 [size, size]``, 1 where the crop
    shows the original image, 0 in the letterbox padding (e.g. to mask losses or metrics). ``centre`` / ``side`` /
    ``angle``: the crop square in the original (continuous pixel coordinates; side in original pixels; degrees the
    image was rotated to level the eyes, counter-clockwise positive). ``face``: the detection it came from (None
    with ``assume_cropped``). ``source_shape``: (H, W) of the original; ``source``: its file name, for messages.
    """

    image: np.ndarray
    affine: np.ndarray
    coverage: np.ndarray
    centre: tuple[float, float]
    side: float
    angle: float
    face: Face | None
    source_shape: tuple[int, int]
    source: str | None = None

    @property
    def size(self) -> int:
        return self.image.shape[0]

    @property
    def inverse(self) -> np.ndarray:
        """``float64 [2, 3]``: crop pixel -> original pixel."""
        return cv2.invertAffineTransform(self.affine)

    @property
    def crop_box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1): the axis-aligned bounds, in original pixel-centre coordinates, of the crop square
        (equal to the square itself when ``angle == 0``); may extend outside the image (letterboxing)."""
        edge = self.size - 0.5
        corners = self.to_original(np.array([[-0.5, -0.5], [edge, -0.5], [-0.5, edge], [edge, edge]]))
        return (*corners.min(axis=0), *corners.max(axis=0))

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """``[N, 2]`` crop pixel (x, y) -> original pixel (x, y) (e.g. keypoints of the animated face)."""
        points = np.asarray(points, np.float64)
        return points @ self.inverse[:, :2].T + self.inverse[:, 2]

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """``[N, 2]`` original pixel (x, y) -> crop pixel (x, y)."""
        points = np.asarray(points, np.float64)
        return points @ self.affine[:, :2].T + self.affine[:, 2]


def _checked_image(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3 or 0 in image.shape:
        raise DataError(f"{name} must be a non-empty uint8 [H, W, 3] RGB image, got {image.dtype} {image.shape}: "
                        f"read it with avatarjax.media.read_image")
    return image


def _load(image_or_path, source: str | None) -> tuple[np.ndarray, str | None]:
    if isinstance(image_or_path, (str, os.PathLike)):
        return media.read_image(image_or_path), source or str(Path(image_or_path))
    return _checked_image(image_or_path, f"portrait {source!r}" if source else "portrait"), source


def crop_affine(centre: tuple[float, float], side: float, angle: float, size: int) -> np.ndarray:
    """``float64 [2, 3]``: the square of ``side`` original pixels centred at ``centre`` (continuous coordinates),
    rotated by ``angle`` degrees (counter-clockwise positive, as displayed), -> a ``size x size`` crop, in OpenCV's
    pixel-centre convention (``cv2.warpAffine``)."""
    scale = size / side
    theta = math.radians(angle)
    # a counter-clockwise rotation as displayed (y points down), like cv2.getRotationMatrix2D
    linear = scale * np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
    # continuous u' = L (u - c) + size / 2 with u = x + 0.5: x' = L x + L (0.5 - c) + size / 2 - 0.5
    shift = linear @ (0.5 - np.asarray(centre, np.float64)) + size / 2 - 0.5
    return np.concatenate([linear, shift[:, None]], axis=1)


def _warp_crop(image: np.ndarray, affine: np.ndarray, size: int, pad: str) -> np.ndarray:
    """Resamples ``image`` into the ``size x size`` crop; shrinking by more than 1.25x first area-averages the image
    (so a large photo is not aliased), then interpolates."""
    scale = math.sqrt(abs(np.linalg.det(affine[:, :2])))
    if scale < 0.8:
        height, width = image.shape[:2]
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        kx, ky = new_w / width, new_h / height  # shrunk pixel x' sits at original x = (x' + 0.5) / k - 0.5
        to_original = np.array([[1 / kx, 0, 0.5 / kx - 0.5], [0, 1 / ky, 0.5 / ky - 0.5], [0, 0, 1]])
        affine = affine @ to_original
    if pad not in ("edge", "black"):
        raise DataError(f"unknown pad '{pad}': use 'edge' (repeat the border pixels) or 'black'")
    border = cv2.BORDER_REPLICATE if pad == "edge" else cv2.BORDER_CONSTANT
    flags = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(image, affine, (size, size), flags=flags, borderMode=border, borderValue=(0, 0, 0))


def _coverage(affine: np.ndarray, size: int, shape: tuple[int, int]) -> np.ndarray:
    """``float32 [size, size]``: 1 where a crop pixel's centre falls inside the original image."""
    inverse = cv2.invertAffineTransform(affine)
    ys, xs = np.mgrid[:size, :size].astype(np.float64)
    ox = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    oy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    inside = (ox >= -0.5) & (ox <= shape[1] - 0.5) & (oy >= -0.5) & (oy <= shape[0] - 0.5)
    return inside.astype(np.float32)


def _eye_angle(face: Face) -> float:
    """Degrees to rotate the image (counter-clockwise positive) so the eye line is level; 0 without eyes."""
    if face.eyes is None:
        return 0.0
    (lx, ly), (rx, ry) = face.eyes
    return math.degrees(math.atan2(ry - ly, rx - lx))  # the eye line's slope in image (y-down) coordinates


def prepare_portrait(image_or_path: np.ndarray | str | os.PathLike, size: int, margin: float = DEFAULT_MARGIN, *,
                     detector: FaceDetector | None = None, assume_cropped: bool = False, align: bool = True,
                     pad: str = "edge", source: str | None = None) -> PreparedPortrait:
    """A photo (``uint8 [H, W, 3]`` RGB or an image file) -> :class:`PreparedPortrait` with a ``size x size`` crop.

    Detects the largest face (``detector``, default :class:`HaarDetector`), takes a square of side
    ``max(face width, height) * (1 + 2 * margin)`` around its centre, rotates it so the eyes are level (``align``,
    when both eyes are found), letterboxes whatever falls outside the image (``pad``: "edge" or "black") and resizes
    to ``size``. ``assume_cropped=True``: no detection; the whole image is the crop, its shorter side letterboxed to
    a square (a 3:4 portrait gets bars left and right; nothing is cut). Raises :class:`FaceNotFound` naming
    ``source`` (the file name when a path is given) when no face is detected.
    """
    image, source = _load(image_or_path, source)
    if size < 8:
        raise DataError(f"portrait size must be at least 8 pixels, got {size}")
    if margin < 0:
        raise DataError(f"margin must be >= 0 (a fraction of the face size added on each side), got {margin}")
    height, width = image.shape[:2]
    face = None
    if assume_cropped:
        centre, side, angle = (width / 2, height / 2), float(max(height, width)), 0.0
    else:
        faces = (detector or _default_detector())(image)
        if not faces:
            where = f"'{source}'" if source else "the portrait image"
            raise FaceNotFound(
                f"no face found in {where} ({width}x{height}): pass a photo with one clear, frontal, well-lit face "
                f"(at least about a tenth of the picture), or, if the image already is a portrait crop, pass "
                f"assume_cropped=True (--assume-cropped) to use the whole image")
        face = max(faces, key=lambda f: f.area)
        centre, side = face.centre, max(face.box[2], face.box[3]) * (1 + 2 * margin)
        angle = _eye_angle(face) if align else 0.0
    affine = crop_affine(centre, side, angle, size)
    return PreparedPortrait(image=_warp_crop(image, affine, size, pad), affine=affine,
                            coverage=_coverage(affine, size, (height, width)), centre=tuple(map(float, centre)),
                            side=float(side), angle=float(angle), face=face, source_shape=(height, width),
                            source=source)


_DETECTOR: HaarDetector | None = None


def _default_detector() -> HaarDetector:
    global _DETECTOR
    if _DETECTOR is None:
        _DETECTOR = HaarDetector()
    return _DETECTOR


def prepare_video(frames: np.ndarray, size: int, margin: float = DEFAULT_MARGIN, *,
                  detector: FaceDetector | None = None, every: int = 5, max_missing: float = 0.5,
                  align: bool = True, pad: str = "edge", source: str | None = None
                  ) -> tuple[np.ndarray, PreparedPortrait]:
    """``uint8 [T, H, W, 3]`` frames -> (``uint8 [T, size, size, 3]`` crops, the :class:`PreparedPortrait` of frame
    0 carrying the one crop transform used for every frame).

    One fixed crop for the whole video (no crop jitter): faces are detected on every ``every``-th frame (and the
    last), and the crop square covers the 5th..95th percentile of the detected boxes' edges, with ``margin``, rotated
    by the median eye angle. Raises :class:`FaceNotFound` naming the frames without a face when more than
    ``max_missing`` of the checked frames have none (or all of them).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise DataError(f"video frames must be a non-empty uint8 [T, H, W, 3] array, got {frames.dtype} "
                        f"{frames.shape}: read them with avatarjax.media.read_video_at")
    detector = detector or _default_detector()
    checked = sorted(set(range(0, frames.shape[0], max(1, every))) | {frames.shape[0] - 1})
    found = {i: max(faces, key=lambda f: f.area) for i in checked if (faces := detector(frames[i]))}
    missing = [i for i in checked if i not in found]
    if not found or len(missing) > max_missing * len(checked):
        where = f"video '{source}'" if source else "the video"
        following = dict(zip(checked, checked[1:] + [frames.shape[0]]))
        spans = sorted({f for i in missing for f in range(i, following[i])})  # a checked frame stands for its span
        how = "" if every <= 1 else f", one frame in {every} checked"
        raise FaceNotFound(
            f"no face found in frames {frame_ranges(spans)} of {where} ({len(missing)} of the {len(checked)} frames "
            f"checked{how}): trim the video to the part where the face is visible, use a clip with one clear frontal "
            f"face, or, if the frames already are portrait crops, use them whole (assume_cropped / "
            f"--assume-cropped)")
    boxes = np.array([f.box for f in found.values()])
    x0, y0 = np.percentile(boxes[:, 0], 5), np.percentile(boxes[:, 1], 5)
    x1, y1 = np.percentile(boxes[:, 0] + boxes[:, 2], 95), np.percentile(boxes[:, 1] + boxes[:, 3], 95)
    centre, side = ((x0 + x1) / 2, (y0 + y1) / 2), max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    angles = [_eye_angle(f) for f in found.values() if f.eyes is not None]
    angle = float(np.median(angles)) if align and angles else 0.0
    affine = crop_affine(centre, side, angle, size)
    crops = np.stack([_warp_crop(frame, affine, size, pad) for frame in frames])
    height, width = frames.shape[1:3]
    prepared = PreparedPortrait(image=crops[0], affine=affine, coverage=_coverage(affine, size, (height, width)),
                                centre=(float(centre[0]), float(centre[1])), side=float(side), angle=angle,
                                face=found.get(0), source_shape=(height, width), source=source)
    return crops, prepared


def _mask_at(x: np.ndarray, y: np.ndarray, size: int, shape: str, feather: float) -> np.ndarray:
    """The blending mask at crop pixel positions (x, y) (any shape, continuous pixel-centre coordinates)."""
    if not 0 <= feather <= 1:
        raise DataError(f"feather must be in [0, 1] (a fraction of the half crop size), got {feather}")
    centre = (size - 1) / 2
    u, v = (x - centre) / (size / 2), (y - centre) / (size / 2)  # -1 .. 1 at the crop's edges
    if shape == "ellipse":
        distance = np.sqrt(u * u + v * v)
    elif shape == "rect":
        distance = np.maximum(np.abs(u), np.abs(v))
    else:
        raise DataError(f"unknown mask shape '{shape}': use 'ellipse' or 'rect'")
    if feather == 0:
        return (distance <= 1).astype(np.float32)
    ramp = np.clip((1 - distance) / feather, 0, 1)
    return (ramp * ramp * (3 - 2 * ramp)).astype(np.float32)


def face_mask(size: int, shape: str = "ellipse", feather: float = 0.15) -> np.ndarray:
    """``float32 [size, size]`` blending mask over the crop: 1 inside, falling smoothly (smoothstep) to 0 at the
    crop's edge over ``feather`` of the half-size. ``shape``: "ellipse" (inscribed in the crop) or "rect"."""
    ys, xs = np.mgrid[:size, :size].astype(np.float64)
    return _mask_at(xs, ys, size, shape, feather)


def paste_back(original: np.ndarray, animated: np.ndarray, prepared: PreparedPortrait | Sequence[PreparedPortrait],
               feather: float = 0.15, shape: str = "ellipse") -> np.ndarray:
    """Composites animated crops back into the original picture or frames.

    ``original``: ``uint8 [H, W, 3]`` (one photo, used under every animated frame) or ``[T, H, W, 3]``;
    ``animated``: ``uint8 [size, size, 3]`` or ``[T, size, size, 3]``; ``prepared``: the :class:`PreparedPortrait`
    of the crop, or one per frame. Returns ``uint8`` frames ``[T, H, W, 3]`` (``[H, W, 3]`` when both inputs are
    single images). Each crop is warped back with the inverse crop transform (bilinear) and blended with weights
    :func:`face_mask` evaluated exactly at each original pixel's position in the crop (so letterbox padding, which
    lies outside the picture, is never pasted); where the mask is zero every pixel is the original's, exactly.
    """
    original, animated = np.asarray(original), np.asarray(animated)
    single = original.ndim == 3 and animated.ndim == 3
    originals = original[None] if original.ndim == 3 else original
    crops = animated[None] if animated.ndim == 3 else animated
    for name, array in (("original", originals), ("animated", crops)):
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
            raise DataError(f"{name} must be uint8 [H, W, 3] or [T, H, W, 3] RGB, got {array.dtype} "
                            f"{np.shape(original if name == 'original' else animated)}")
    preps = [prepared] if isinstance(prepared, PreparedPortrait) else list(prepared)
    count = max(len(originals), len(crops), len(preps))
    for name, n in (("original frames", len(originals)), ("animated frames", len(crops)),
                    ("prepared portraits", len(preps))):
        if n not in (1, count):
            raise DataError(f"paste_back got {n} {name} but {count} frames elsewhere: pass one, or one per frame")
    size = crops.shape[1]
    height, width = originals.shape[1:3]
    for prep in preps:
        if crops.shape[1:3] != (prep.size, prep.size) or prep.source_shape != (height, width):
            raise DataError(f"paste_back: animated crops are {crops.shape[1]}x{crops.shape[2]} for a "
                            f"{prep.size}x{prep.size} preparation of a {prep.source_shape[1]}x{prep.source_shape[0]} "
                            f"image, but the original is {width}x{height}: paste into the image that was prepared, "
                            f"at the prepared size")
    _mask_at(np.zeros(1), np.zeros(1), size, shape, feather)  # bad shape / feather fail before any work
    out = np.empty((count, height, width, 3), np.uint8)
    cache: dict[int, tuple] = {}
    for t in range(count):
        prep = preps[t % len(preps)] if len(preps) > 1 else preps[0]
        if id(prep) not in cache:
            cache[id(prep)] = _paste_geometry(prep, shape, feather, height, width)
        roi, inverse, alpha = cache[id(prep)]
        frame = originals[t if len(originals) > 1 else 0]
        out[t] = frame
        if roi is None:
            continue
        x0, y0, x1, y1 = roi
        warped = cv2.warpAffine(crops[t if len(crops) > 1 else 0], inverse, (x1 - x0, y1 - y0),
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        base = frame[y0:y1, x0:x1].astype(np.float32)
        blended = np.rint(base + alpha[..., None] * (warped.astype(np.float32) - base))
        out[t, y0:y1, x0:x1] = np.where(alpha[..., None] > 0, np.clip(blended, 0, 255), base).astype(np.uint8)
    return out[0] if single else out


def _paste_geometry(prep: PreparedPortrait, shape: str, feather: float, height: int, width: int):
    """(the region of the original the crop covers (x0, y0, x1, y1) or None, the crop -> region transform, the
    blending weights ``float32 [y1 - y0, x1 - x0]``)."""
    bx0, by0, bx1, by1 = prep.crop_box
    x0, y0 = max(0, math.floor(bx0)), max(0, math.floor(by0))
    x1, y1 = min(width, math.ceil(bx1) + 1), min(height, math.ceil(by1) + 1)
    if x1 <= x0 or y1 <= y0:
        return None, None, None
    inverse = prep.inverse.copy()
    inverse[:, 2] -= (x0, y0)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    a = prep.affine
    alpha = _mask_at(a[0, 0] * xs + a[0, 1] * ys + a[0, 2], a[1, 0] * xs + a[1, 1] * ys + a[1, 2], prep.size,
                     shape, feather)
    return (x0, y0, x1, y1), inverse, alpha
