"""Faces in the wild (avatarjax.pipelines.portrait_prep): crop geometry, letterboxing, paste-back exactness, the
Haar detector on synthface renders, and the no-face errors."""

import math

import cv2
import numpy as np
import pytest

from avatarjax import media
from avatarjax.data.synthface import identity as identity_lib, render, schema
from avatarjax.errors import AvatarError, FaceNotFound
from avatarjax.pipelines import portrait_prep as pp


def _fixed(box, eyes=None):
    """A detector that always finds the given face (detection is pluggable)."""
    return lambda rgb: [pp.Face(box=box, eyes=eyes)]


def _smooth(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[:height, :width].astype(np.float64)
    return np.stack([128 + 90 * np.sin(x / 17 + y / 23), 128 + 90 * np.cos(y / 19),
                     128 + 80 * np.sin((x - y) / 29)], axis=-1).astype(np.uint8)


def _crop_radius(prepared: pp.PreparedPortrait, height: int, width: int) -> np.ndarray:
    """Every original pixel's position in the crop, as a distance from the crop centre (1 = the crop's edge)."""
    ys, xs = np.mgrid[:height, :width]
    crop = prepared.to_crop(np.stack([xs.ravel(), ys.ravel()], 1))
    centre = (prepared.size - 1) / 2
    return (np.hypot(crop[:, 0] - centre, crop[:, 1] - centre) / (prepared.size / 2)).reshape(height, width)


@pytest.fixture(scope="module")
def synthface():
    return render.render_frames(identity_lib.sample_identity(3), schema.neutral_state(1), size=128)[0]


def test_paste_back_lands_on_the_recorded_box_and_leaves_the_rest_alone():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (90, 160, 3), np.uint8)  # 16:9 noise: any change is visible
    eyes = ((80.0, 35.0), (96.0, 39.0))  # tilted eye line: the crop is rotated
    prepared = pp.prepare_portrait(original, 48, margin=0.3, detector=_fixed((68, 18, 40, 40), eyes))
    assert prepared.angle == pytest.approx(math.degrees(math.atan2(4, 16)))
    assert prepared.centre == (88, 38) and prepared.side == pytest.approx(40 * 1.6)
    np.testing.assert_allclose(prepared.to_crop(prepared.to_original([[3.0, 7.0]])), [[3.0, 7.0]], atol=1e-9)
    # the eye line is level in the crop
    crop_eyes = prepared.to_crop(np.array(eyes) - 0.5)
    assert crop_eyes[0, 1] == pytest.approx(crop_eyes[1, 1])

    magenta = np.zeros((48, 48, 3), np.uint8)
    magenta[..., [0, 2]] = 255
    out = pp.paste_back(original, magenta, prepared, feather=0.2)
    assert out.shape == original.shape and out.dtype == np.uint8
    radius = _crop_radius(prepared, 90, 160)
    outside = radius > 1 + 1.5 / 24  # beyond the ellipse (plus a pixel of bilinear spread): exactly unchanged
    np.testing.assert_array_equal(out[outside], original[outside])
    inside = radius < 0.8 - 1.5 / 24  # fully opaque part of the feathered ellipse: exactly the animated face
    assert inside.sum() > 500 and (out[inside] == magenta[0, 0]).all()
    changed = np.argwhere((out != original).any(-1))  # the pasted face sits at the recorded place
    np.testing.assert_allclose(changed.mean(0)[::-1] + 0.5, prepared.centre, atol=0.6)
    x0, y0, x1, y1 = prepared.crop_box
    assert x0 <= changed[:, 1].min() and changed[:, 1].max() <= x1 and y0 <= changed[:, 0].min()


def test_crop_then_paste_of_an_unmodified_crop_is_the_original():
    original = _smooth(120, 100)
    eyes = ((38.0, 50.0), (62.0, 46.0))
    for size, box in ((64, (26, 30, 48, 48)), (96, (30, 36, 40, 40))):  # shrinking and enlarging crops
        prepared = pp.prepare_portrait(original, size, margin=0.2, detector=_fixed(box, eyes))
        out = pp.paste_back(original, prepared.image, prepared, feather=0.15)
        radius = _crop_radius(prepared, 120, 100)
        inside = radius < 0.98
        error = np.abs(out.astype(int) - original.astype(int))
        assert error[inside].max() <= 6 and error[inside].mean() < 1.0  # interpolation error only
        np.testing.assert_array_equal(out[radius > 1.07], original[radius > 1.07])
    # frames: one photo under many animated frames, or frame-by-frame; rect masks too
    frames = pp.paste_back(original, np.stack([prepared.image] * 3), prepared, shape="rect")
    assert frames.shape == (3, 120, 100, 3) and (frames == frames[:1]).all()
    again = pp.paste_back(frames, np.stack([prepared.image] * 3), [prepared] * 3)
    assert again.shape == frames.shape
    with pytest.raises(AvatarError, match="got 2 animated frames but 3 frames"):
        pp.paste_back(frames, np.stack([prepared.image] * 2), prepared)
    with pytest.raises(AvatarError, match="paste into the image that was prepared"):
        pp.paste_back(original[:50], prepared.image, prepared)


@pytest.mark.parametrize("height,width", [(128, 96), (90, 160)])  # 3:4 and 16:9
def test_letterboxing_odd_aspect_ratios(height, width):
    image = _smooth(height, width)
    prepared = pp.prepare_portrait(image, 64, assume_cropped=True, pad="black")
    assert prepared.image.shape == (64, 64, 3) and prepared.angle == 0 and prepared.face is None
    bar = round((max(height, width) - min(height, width)) / 2 * 64 / max(height, width))  # 8 px and 14 px
    covered = prepared.coverage.astype(bool)
    lines = covered.any(axis=0) if width < height else covered.any(axis=1)  # columns (3:4) or rows (16:9)
    assert lines.sum() == 64 - 2 * bar and lines[bar:64 - bar].all()
    assert (prepared.image[~covered] == 0).all() and prepared.image[covered].mean() > 60  # bars, then the picture
    shrunk = cv2.resize(image, (64 * width // max(height, width), 64 * height // max(height, width)),
                        interpolation=cv2.INTER_AREA)
    inner = prepared.image[bar:64 - bar] if width > height else prepared.image[:, bar:64 - bar]
    assert np.abs(inner[2:-2, 2:-2].astype(int) - shrunk[2:-2, 2:-2]).mean() < 3  # nothing was cut
    edge = pp.prepare_portrait(image, 64, assume_cropped=True)  # pad="edge": the bars repeat the border
    np.testing.assert_array_equal(edge.image[covered], prepared.image[covered])
    assert (edge.image[~covered] != 0).any()
    out = pp.paste_back(image, np.zeros_like(edge.image), edge, feather=0.0, shape="rect")
    assert (out == 0).all()  # the whole picture is covered, and only the picture is pasted


def test_haar_finds_a_synthface_face_in_a_wider_scene(synthface, tmp_path):
    background = [int(v) for v in synthface[0, 0]]
    scene = cv2.copyMakeBorder(synthface, 40, 40, 60, 140, cv2.BORDER_CONSTANT, value=background)  # 328x208
    path = media.write_image(tmp_path / "scene.png", scene)
    prepared = pp.prepare_portrait(path, 64)
    assert prepared.source == str(path) and prepared.source_shape == (208, 328)
    face_centre = (60 + 64, 40 + 64)  # where the 128 px render sits in the scene (the face is centred in it)
    assert np.hypot(*np.subtract(prepared.centre, face_centre)) < 8
    assert 0.8 < prepared.side / 128 < 1.4  # crop about the size of the render
    reference = cv2.resize(synthface, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float64)
    correlation = np.corrcoef(prepared.image.astype(np.float64).ravel(), reference.ravel())[0, 1]
    assert correlation > 0.8
    # a tilted head is levelled by the eye line
    tilted = cv2.warpAffine(synthface, cv2.getRotationMatrix2D((63.5, 63.5), 10, 1.0), (128, 128),
                            borderMode=cv2.BORDER_REPLICATE)
    assert pp.prepare_portrait(tilted, 64).angle == pytest.approx(-10, abs=3)


def test_no_face_errors_name_the_file_and_the_frames(tmp_path):
    blank = media.write_image(tmp_path / "wall.png", _smooth(80, 120))
    with pytest.raises(FaceNotFound) as err:
        pp.prepare_portrait(blank, 64)
    message = str(err.value)
    assert isinstance(err.value, AvatarError)
    assert "wall.png" in message and "120x80" in message and "--assume-cropped" in message
    assert pp.prepare_portrait(blank, 64, assume_cropped=True).image.shape == (64, 64, 3)  # the suggested fix works

    frames = np.zeros((30, 40, 40, 3), np.uint8)
    frames[:, 10:30, 10:30] = 200
    frames[12:23] = 0  # the "face" leaves the picture for frames 12-22
    bright = lambda rgb: [pp.Face(box=(10, 10, 20, 20))] if rgb.max() > 0 else []  # noqa: E731
    with pytest.raises(FaceNotFound, match=r"frames 12-22 of video 'clip\.mp4' \(11 of the 30 frames"):
        pp.prepare_video(frames, 32, detector=bright, every=1, max_missing=0.2, source="clip.mp4")
    crops, prepared = pp.prepare_video(frames, 32, margin=0.5, detector=bright, every=1)  # tolerated by default
    assert crops.shape == (30, 32, 32, 3) and prepared.centre == (20, 20) and prepared.side == 40
    np.testing.assert_array_equal(crops[0], crops[1])  # one fixed crop, no jitter
    with pytest.raises(FaceNotFound, match="frames 0-29"):
        pp.prepare_video(np.zeros((30, 40, 40, 3), np.uint8), 32, detector=bright)
