"""PFL fixed-window crop: the window formulas (released and paper) on hand-made boxes, tracking, clamping, the
missing-face errors, array vs mp4 input, and head-translation recovery on a short synthface clip."""

import numpy as np
import pytest

from avatarjax import media
from avatarjax.data.preprocess import pfl
from avatarjax.data.synthface import clips, render
from avatarjax.data.synthface.identity import sample_identity
from avatarjax.errors import ConfigError, DataError


# ------------------------------------------------------------------------------------------- window formulas
def test_released_window_hand_computed():
    boxes = np.array([[100, 50, 80, 80], [110, 60, 80, 80]])
    # mean l, t, r, b = 105, 55, 185, 135; padded 85, 35, 205, 155; centre (145, 95); 128 square from (81, 31)
    np.testing.assert_array_equal(pfl.released_window(boxes, (640, 480), padding=20, window=128), [81, 31, 209, 159])
    # truncation of the means: l = floor(100.5) = 100, r = floor(180.5) = 180 -> padded 80..200, centre 140
    boxes = np.array([[100, 50, 80, 80], [101, 50, 80, 80]])
    np.testing.assert_array_equal(pfl.released_window(boxes, (640, 480), padding=20, window=128), [76, 26, 204, 154])


def test_released_window_clamps_at_the_frame_border():
    # top-left: padded box (0, 0, 85, 85), window = frame's shorter side 240 (< 256), pushed to (0, 0)
    np.testing.assert_array_equal(pfl.released_window([[5, 5, 60, 60]], (320, 240), 20, 256), [0, 0, 240, 240])
    # bottom-right: padded box clipped to (280, 180, 320, 240), centre (300, 210), 100 window shifted inside
    np.testing.assert_array_equal(pfl.released_window([[300, 200, 20, 20]], (320, 240), 20, 100),
                                  [220, 140, 320, 240])
    # floating boxes clamp the same way
    np.testing.assert_array_equal(pfl.floating_boxes([[10, 10], [315, 235]], 100, (320, 240)),
                                  [[0, 0, 100, 100], [220, 140, 320, 240]])


def test_paper_window_hand_computed():
    boxes = np.array([[100, 50, 80, 80], [120, 70, 60, 100]])
    # centres (140, 90), (150, 120); extents: x 180 - 100 = 80, y 170 - 50 = 120 -> capped by omega_h 100
    np.testing.assert_allclose(pfl.paper_window(boxes, 100, 100), [145, 105, 80, 100])
    np.testing.assert_allclose(pfl.paper_window(boxes, 60, 200), [145, 105, 60, 120])
    window = pfl.paper_window(boxes, 100, 100)
    np.testing.assert_array_equal(pfl.window_box(window, (640, 480), square=True), [95, 55, 195, 155])
    np.testing.assert_array_equal(pfl.window_box(window, (640, 480), square=False), [105, 55, 185, 155])
    # a 120 x 90 frame: the square shrinks to 90 and is shifted left from x0 = 145 - 45 = 100 to 120 - 90 = 30
    np.testing.assert_array_equal(pfl.window_box(window, (120, 90), square=True), [30, 0, 120, 90])


# -------------------------------------------------------------------------------------------------- tracking
def test_tracking_top_most_then_nearest():
    detections = [np.zeros((0, 4)),                                  # no face yet: no box
                  np.array([[10, 100, 50, 50], [200, 20, 50, 50]]),  # first face: the top-most
                  np.array([[12, 102, 50, 50], [205, 25, 50, 50]]),  # nearest to the previous
                  np.zeros((0, 4)),                                  # missed: keeps the previous
                  np.array([[0, 0, 50, 50], [210, 30, 50, 50]])]
    boxes, detected = pfl.track_faces(detections)
    assert np.isnan(boxes[0]).all()
    np.testing.assert_array_equal(boxes[1:], [[200, 20, 50, 50], [205, 25, 50, 50], [205, 25, 50, 50],
                                              [210, 30, 50, 50]])
    np.testing.assert_array_equal(detected, [False, True, True, False, True])
    boxes, _ = pfl.track_faces(detections, keep_previous=False)
    assert np.isnan(boxes[3]).all() and not np.isnan(boxes[4]).any()


def test_frame_ranges():
    assert pfl.frame_ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert pfl.frame_ranges([3]) == "3"


# ---------------------------------------------------------------------------------------------------- errors
def _detector_missing(missing):
    """A fake detector that sees a face in every frame but those whose first pixel value is in ``missing``."""
    return lambda frame: np.zeros((0, 4)) if int(frame[0, 0, 0]) in missing else np.array([[40, 40, 60, 60]])


def _numbered_frames(n, size=160):
    frames = np.zeros((n, size, size, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(n)
    return frames


def test_no_face_names_the_frames_and_the_fix():
    with pytest.raises(DataError, match=r"no face in any of the 5 frames .*frames 0-4.*detector") as err:
        pfl.pfl_crop(_numbered_frames(5), detector=lambda frame: np.zeros((0, 4)))
    assert "max_missing_fraction" in str(err.value)
    with pytest.raises(DataError, match=r"no face in 4 of 10 frames .*40%.*frames 2-4, 7"):
        pfl.pfl_crop(_numbered_frames(10), detector=_detector_missing({2, 3, 4, 7}))
    with pytest.raises(DataError, match=r"first frames 0-1"):
        pfl.pfl_crop(_numbered_frames(10), detector=_detector_missing({0, 1}))
    # allowed: one missed frame in ten, and two leading misses when configured
    assert pfl.pfl_crop(_numbered_frames(10), detector=_detector_missing({5})).detected.sum() == 9
    config = pfl.PFLConfig(max_leading_missing=2, window=100, output_size=64)
    result = pfl.pfl_crop(_numbered_frames(10), config, detector=_detector_missing({0, 1}))
    assert result.crops.shape == (10, 64, 64, 3)
    np.testing.assert_array_equal(result.box, [20, 20, 120, 120])  # box 40..100 padded to 20..120, centre 70


def test_bad_inputs():
    with pytest.raises(ConfigError, match="did you mean 'paper'"):
        pfl.PFLConfig(mode="papers")
    with pytest.raises(DataError, match=r"uint8 \[T, H, W, 3\]"):
        pfl.pfl_crop(np.zeros((4, 32, 32, 3), np.float32))
    with pytest.raises(DataError, match=r"\[3, 2\]"):
        pfl.floating_crop(_numbered_frames(3), centres=np.zeros((2, 2)))


# ------------------------------------------------------------------------------------------ synthface video
def _synthface(identity, frames=8, size=384):
    state = clips.generate_clip(0, identity=identity, kind="talking", num_frames=48).state[:frames].copy()
    state[:, -1] = -0.3  # depth: shrink the face so a 256 window fits around it in a 384 frame
    return render.render_frames(sample_identity(identity, 0), state, size)


def test_array_and_mp4_crops_agree(tmp_path):
    frames = _synthface(1)  # identity 1: the Haar cascade finds it in every frame
    path = media.write_video(tmp_path / "clip.mp4", frames, fps=25)
    for detector in (None, pfl.SkinDetector()):
        from_array = pfl.pfl_crop(frames, detector=detector)
        from_file = pfl.pfl_crop(path, detector=detector)
        assert from_array.crops.shape == from_file.crops.shape == (8, 256, 256, 3)
        assert from_array.detected.all() and from_file.detected.all()
        assert np.abs(from_array.box - from_file.box).max() <= 2
        assert from_array.fps is None and from_file.fps == pytest.approx(25)
        assert from_array.box[2] - from_array.box[0] == 256


def test_paper_mode_and_floating_crop_on_synthface():
    frames = _synthface(0, frames=4)
    paper = pfl.pfl_crop(frames, pfl.PFLConfig(mode="paper", output_size=128), pfl.SkinDetector())
    x0, y0, x1, y1 = paper.box
    assert x1 - x0 == y1 - y0 <= 256 and paper.crops.shape == (4, 128, 128, 3)
    floating = pfl.floating_crop(frames, detector=pfl.SkinDetector())
    assert floating.box.shape == (4, 4) and floating.crops.shape == (4, 256, 256, 3)


def test_translation_recovery_pfl_keeps_it_floating_loses_it():
    r = pfl.translation_recovery(0, num_frames=12)
    assert r["detected_fraction"] == 1.0 and r["true_max_px"] > 15
    assert r["pfl_keypoint_err_px"] < 1.0 and r["pfl_image_err_px"] < 1.0
    assert r["floating_keypoint_err_px"] > 10 and r["floating_image_err_px"] > 10
