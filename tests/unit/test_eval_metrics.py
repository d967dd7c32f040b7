"""avatarjax.eval: hand-computed values on tiny arrays, properties, and input validation.

Every expected number below is derived by hand in the comment next to it, never by calling the function under test.
"""

import subprocess
import sys

import numpy as np
import pytest

from avatarjax.errors import DataError
from avatarjax.eval import (AUF1Summary, MetricInputError, au_activations, au_emo_coverage, au_f1, au_f1_dataset,
                            au_temp, audio_rms_envelope, dtw_cost_matrix, dtw_distance, eye_lmd,
                            inter_ocular_distance, keypoint_jitter, l_connect, l_sm1, l_sm2, lagged_correlation,
                            lipsync_score, mouth_opening, pose_jitter, seam_jump, step_sizes)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ------------------------------------------------------------------------------------------------------ package


def test_package_imports_no_jax_model_or_trainer():
    code = ("import sys, avatarjax.eval; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax', 'orbax', 'torch') "
            "or m.startswith(('avatarjax.models', 'avatarjax.train', 'avatarjax.nn', 'avatarjax.parallel'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_error_is_data_error_and_value_error():
    assert issubclass(MetricInputError, DataError) and issubclass(MetricInputError, ValueError)


# ---------------------------------------------------------------------------------------------------------- DTW


def test_dtw_hand_computed_matrix_with_repeat():
    # x = [1, 2, 3], y = [1, 2, 2, 3]; c[i, j] = |x_i - y_j|:
    #   c = [[0, 1, 1, 2], [1, 0, 0, 1], [2, 1, 1, 0]]
    # row 0 is the running sum: [0, 1, 2, 4]
    # row 1: D10 = 1 + 0 = 1; D11 = 0 + min(0, 1, 1) = 0; D12 = 0 + min(1, 2, 0) = 0; D13 = 1 + min(2, 4, 0) = 1
    # row 2: D20 = 2 + 1 = 3; D21 = 1 + min(1, 0, 3) = 1; D22 = 1 + min(0, 0, 1) = 1; D23 = 0 + min(0, 1, 1) = 0
    expected = np.array([[0, 1, 2, 4], [1, 0, 0, 1], [3, 1, 1, 0]], dtype=float)
    np.testing.assert_array_equal(dtw_cost_matrix([1, 2, 3], [1, 2, 2, 3]), expected)
    assert dtw_distance([1, 2, 3], [1, 2, 2, 3]) == 0.0


def test_dtw_hand_computed_shifted_bump_and_band():
    # x = [0, 0, 1], y = [0, 1, 0]: c = [[0, 1, 0], [0, 1, 0], [1, 0, 1]]
    # row 0: [0, 1, 1]; row 1: D10 = 0, D11 = 1 + min(0, 1, 0) = 1, D12 = 0 + min(1, 1, 1) = 1
    # row 2: D20 = 1 + 0 = 1, D21 = 0 + min(0, 1, 1) = 0, D22 = 1 + min(1, 1, 0) = 1   -> DTW = 1
    assert dtw_distance([0, 0, 1], [0, 1, 0]) == 1.0
    # The best path (0,0) (1,0) (2,1) (2,2) stays within |i - j| <= 1, so band=1 gives the same 1.
    assert dtw_distance([0, 0, 1], [0, 1, 0], band=1) == 1.0
    # band=0 forces the diagonal: |0-0| + |0-1| + |1-0| = 2.
    assert dtw_distance([0, 0, 1], [0, 1, 0], band=0) == 2.0
    # band=0 marks every off-diagonal cell as unreachable (inf).
    m = dtw_cost_matrix([0, 0, 1], [0, 1, 0], band=0)
    np.testing.assert_array_equal(np.diag(m), [0, 1, 2])
    assert np.isinf(m[0, 1]) and np.isinf(m[2, 0])


def test_dtw_hand_computed_multivariate_and_unequal_lengths():
    # x = [[0, 0], [1, 1]], y = [[0, 1]]: L1 costs 1 and 1; the only path visits both -> 2.
    assert dtw_distance([[0, 0], [1, 1]], [[0, 1]]) == 2.0
    # x = [0, 3], y = [1]: |0 - 1| + |3 - 1| = 3.
    assert dtw_distance([0, 3], [1]) == 3.0
    assert dtw_distance([0, 3], [1], band=1) == 3.0


def _naive_dtw(x, y):
    d = np.full((len(x) + 1, len(y) + 1), np.inf)
    d[0, 0] = 0
    for i in range(len(x)):
        for j in range(len(y)):
            d[i + 1, j + 1] = abs(x[i] - y[j]) + min(d[i, j], d[i, j + 1], d[i + 1, j])
    return d[-1, -1]


def test_dtw_properties(rng):
    for t1, t2 in [(7, 7), (5, 9), (12, 4)]:
        x, y = rng.normal(size=t1), rng.normal(size=t2)
        assert dtw_distance(x, y) == pytest.approx(_naive_dtw(x, y), rel=1e-12)
        assert dtw_distance(x, y) == pytest.approx(dtw_distance(y, x), rel=1e-12)      # symmetric
        assert dtw_distance(x + 5, y + 5) == pytest.approx(dtw_distance(x, y), rel=1e-9)  # translation invariant
        assert dtw_distance(3 * x, 3 * y) == pytest.approx(3 * dtw_distance(x, y), rel=1e-12)  # homogeneous
        assert dtw_distance(x, x) == 0.0
        # A wide band changes nothing; a narrower one can only cost more.
        assert dtw_distance(x, y, band=max(t1, t2)) == pytest.approx(dtw_distance(x, y), rel=1e-12)
        assert dtw_distance(x, y, band=abs(t1 - t2)) >= dtw_distance(x, y) - 1e-12


@pytest.mark.parametrize("call, message", [
    (lambda: dtw_distance([1, 2, 3], [1, 2], band=0), "band=0 is narrower than the length difference"),
    (lambda: dtw_distance(np.zeros((2, 2, 2)), [1]), r"x must have shape \[T\] or \[T, D\]"),
    (lambda: dtw_distance([], [1]), "x needs at least 1 frame"),
    (lambda: dtw_distance([[1, 2]], [[1, 2, 3]]), "same feature size"),
    (lambda: dtw_distance([1, np.nan], [1]), "x contains NaN"),
    (lambda: dtw_distance([1], [1], band=-1), "band must be an integer >= 0"),
])
def test_dtw_validation(call, message):
    with pytest.raises(MetricInputError, match=message):
        call()


# ----------------------------------------------------------------------------------------------------------- AU


def _traj(maxima, t=3):
    """[t, U] trajectory whose per-AU maximum is ``maxima`` (reached in the middle frame)."""
    a = np.zeros((t, len(maxima)))
    a[t // 2] = maxima
    return a


def test_au_f1_hand_computed():
    # tau = 0.5 for all 4 AUs. truth maxima [0.9, 0.2, 0.7, 0.1] -> active [1, 0, 1, 0];
    # pred maxima [0.8, 0.6, 0.3, 0.0] -> active [1, 1, 0, 0].
    # TP = 1 (AU0), FP = 1 (AU1), FN = 1 (AU2) -> P = 1/2, R = 1/2, F1 = 2*1 / (2 + 1 + 1) = 0.5
    p, r, f = au_f1(_traj([0.8, 0.6, 0.3, 0.0]), _traj([0.9, 0.2, 0.7, 0.1]), 0.5)
    assert (p, r, f) == (0.5, 0.5, 0.5)
    # Activation is strict: max == tau is inactive. tau = [0.8, 0.5, 0.5, 0.5] switches off predicted AU0:
    # pred active [0, 1, 0, 0] -> TP = 0, FP = 1, FN = 2 -> P = 0, R = 0, F1 = 0
    assert au_f1(_traj([0.8, 0.6, 0.3, 0.0]), _traj([0.9, 0.2, 0.7, 0.1]), [0.8, 0.5, 0.5, 0.5]) == (0, 0, 0)
    np.testing.assert_array_equal(au_activations(_traj([0.8, 0.6, 0.3, 0.0]), [0.8, 0.5, 0.5, 0.5]),
                                  [False, True, False, False])


def test_au_f1_edge_cases():
    # Nothing active anywhere: documented as perfect.
    assert au_f1(_traj([0.1, 0.2]), _traj([0.0, 0.3]), 0.5) == (1.0, 1.0, 1.0)
    # Prediction silent, truth active: TP = FP = 0, FN = 1 -> precision 0/0 -> 0, recall 0, F1 0.
    assert au_f1(_traj([0.1, 0.2]), _traj([0.9, 0.3]), 0.5) == (0.0, 0.0, 0.0)
    # Prediction active, truth silent: TP = FN = 0, FP = 1 -> precision 0, recall 0/0 -> 0, F1 0.
    assert au_f1(_traj([0.9, 0.2]), _traj([0.1, 0.3]), 0.5) == (0.0, 0.0, 0.0)
    # Truth and prediction may have different lengths (activation uses the max over time).
    assert au_f1(_traj([0.9, 0.9], t=7), _traj([0.9, 0.9], t=2), 0.5) == (1.0, 1.0, 1.0)


def test_au_f1_dataset_hand_computed():
    tau = 0.5
    preds = [_traj([0.8, 0.6, 0.3, 0.0]), _traj([0.9, 0.9, 0.0, 0.0]), _traj([0.0, 0.0, 0.0, 0.0])]
    trues = [_traj([0.9, 0.2, 0.7, 0.1]), _traj([0.7, 0.6, 0.0, 0.0]), _traj([0.1, 0.0, 0.0, 0.0])]
    # clip 0: pred [1,1,0,0] true [1,0,1,0] -> TP AU0, FP AU1, FN AU2 -> F1 0.5
    # clip 1: pred [1,1,0,0] true [1,1,0,0] -> TP AU0, AU1              -> F1 1
    # clip 2: nothing active                                            -> F1 1 (convention)
    s = au_f1_dataset(preds, trues, tau)
    assert isinstance(s, AUF1Summary)
    # micro: TP = 3, FP = 1, FN = 1 -> P = R = 3/4, F1 = 6 / (6 + 1 + 1) = 3/4
    assert s.micro == pytest.approx((0.75, 0.75, 0.75))
    # per AU: AU0 tp=2 -> (1, 1, 1); AU1 tp=1 fp=1 -> P 1/2, R 1, F1 2/(2+1) = 2/3;
    #         AU2 fn=1 -> (0, 0, 0); AU3 never active -> (1, 1, 1)
    np.testing.assert_array_equal(s.tp, [2, 1, 0, 0])
    np.testing.assert_array_equal(s.fp, [0, 1, 0, 0])
    np.testing.assert_array_equal(s.fn, [0, 0, 1, 0])
    np.testing.assert_allclose(s.per_au.precision, [1, 0.5, 0, 1])
    np.testing.assert_allclose(s.per_au.recall, [1, 1, 0, 1])
    np.testing.assert_allclose(s.per_au.f1, [1, 2 / 3, 0, 1])
    # macro F1 = (1 + 2/3 + 0 + 1) / 4 = 2/3; mean per-clip F1 = (0.5 + 1 + 1) / 3 = 5/6
    assert s.macro_f1 == pytest.approx(2 / 3)
    assert s.clip_mean_f1 == pytest.approx(5 / 6)
    # A stacked [N, T, U] array gives the same result as a list of clips.
    s2 = au_f1_dataset(np.stack(preds), np.stack(trues), tau)
    assert s2.micro == s.micro and s2.macro_f1 == s.macro_f1


def test_au_f1_properties(rng):
    a = rng.uniform(0, 5, size=(20, 12))
    tau = rng.uniform(1, 4, size=12)
    assert au_f1(a, a, tau) == (1.0, 1.0, 1.0)
    assert au_f1(3 * a, 3 * a[::-1], 3 * tau) == au_f1(a, a[::-1], tau)              # scaling with thresholds
    b = rng.uniform(0, 5, size=(20, 12))
    assert au_f1(b, a, tau).f1 == au_f1(a, b, tau).f1                                 # F1 is symmetric
    s = au_f1_dataset([a, b], [a, b], tau)
    assert s.micro == (1.0, 1.0, 1.0) and s.macro_f1 == 1.0 and s.clip_mean_f1 == 1.0


def test_au_temp_hand_computed():
    # U = 2, T = 3. AU0: pred [0, 0, 1], true [0, 1, 0] -> DTW = 1 (see the DTW test). AU1: both [1, 1, 1] -> 0.
    pred = np.array([[0, 1], [0, 1], [1, 1]], dtype=float)
    true = np.array([[0, 1], [1, 1], [0, 1]], dtype=float)
    # norm="sum": Z0 = 1 + 1 = 2 -> 1/2; Z1 = 3 + 3 -> 0/6 = 0.  AU-Temp = 1 - (1/2 + 0)/2 = 0.75
    assert au_temp(pred, true, [0, 1]) == pytest.approx(0.75)
    # norm="truth": Z0 = 1 -> 1; Z1 = 3 -> 0.                     AU-Temp = 1 - (1 + 0)/2 = 0.5
    assert au_temp(pred, true, [0, 1], norm="truth") == pytest.approx(0.5)
    # norm="range": Z0 = 3 * (1 - 0) = 3 -> 1/3; Z1 = 3 * 0 = 0 with DTW 0 -> 0.  AU-Temp = 1 - (1/3)/2 = 5/6
    assert au_temp(pred, true, [0, 1], norm="range") == pytest.approx(5 / 6)
    # Only AU0 in the target set: 1 - 1/2 = 0.5; band=0 forces DTW = 2 -> 1 - 2/2 = 0.
    assert au_temp(pred, true, [0]) == pytest.approx(0.5)
    assert au_temp(pred, true, [0], band=0) == 0.0
    # Z = 0 with a non-zero DTW counts as the worst term: truth AU all zero, pred not -> "truth" term 1 -> 0.
    assert au_temp(np.ones((3, 1)), np.zeros((3, 1)), [0], norm="truth") == 0.0


def test_au_temp_properties(rng):
    a = rng.uniform(0, 5, size=(30, 6))
    b = rng.uniform(0, 5, size=(30, 6))
    for norm in ("sum", "truth", "range"):
        assert au_temp(a, a, [0, 2, 5], norm=norm) == 1.0
        assert au_temp(4 * a, 4 * b, [0, 2, 5], norm=norm) == pytest.approx(au_temp(a, b, [0, 2, 5], norm=norm))
        assert 0.0 <= au_temp(a, b, [1, 3], norm=norm) <= 1.0
    # A time-warped copy (every frame repeated) is temporally perfect under DTW.
    assert au_temp(np.repeat(a, 2, axis=0), a, [0, 1]) == pytest.approx(1.0)


def test_au_emo_coverage_hand_computed():
    mapping = {"happy": [0, 2, 3], "sad": [1], "neutral": []}
    pred = _traj([0.9, 0.8, 0.1, 0.2])                   # active (tau 0.5): [1, 1, 0, 0]
    assert au_emo_coverage(pred, "happy", mapping, 0.5) == pytest.approx(1 / 3)   # only AU0 of {0, 2, 3}
    assert au_emo_coverage(pred, "sad", mapping, 0.5) == 1.0                       # AU1 active
    assert au_emo_coverage(pred, "neutral", mapping, 0.5) == 1.0                   # empty set: vacuous
    assert au_emo_coverage(pred, "happy", mapping, [0.95, 0.5, 0.05, 0.05]) == pytest.approx(2 / 3)  # AU2, AU3


@pytest.mark.parametrize("call, message", [
    (lambda: au_f1(np.zeros((3, 4)), np.zeros((3, 5)), 0.5), "same number of AUs"),
    (lambda: au_f1(np.zeros(4), np.zeros((3, 4)), 0.5), r"pred must have shape \[T, U\]"),
    (lambda: au_f1(np.zeros((3, 4)), np.zeros((3, 4)), [0.5, 0.5]), "thresholds has 2 entries but .* U=4"),
    (lambda: au_f1_dataset([np.zeros((3, 4))], [], 0.5), "1 predicted clips but 0 ground-truth"),
    (lambda: au_f1_dataset([np.zeros((3, 4)), np.zeros((3, 2))], [np.zeros((3, 4)), np.zeros((3, 2))], 0.5),
     "clip 1 has 2 AUs but clip 0 has 4"),
    (lambda: au_temp(np.zeros((3, 4)), np.zeros((3, 4)), [4]), r"target_aus has indices outside \[0, 4\)"),
    (lambda: au_temp(np.zeros((3, 4)), np.zeros((3, 4)), []), "target_aus must be a non-empty"),
    (lambda: au_temp(np.zeros((3, 4)), np.zeros((3, 4)), [1, 1]), "duplicate"),
    (lambda: au_temp(np.zeros((3, 4)), np.zeros((3, 4)), [1], norm="truht"), "did you mean 'truth'"),
    (lambda: au_emo_coverage(np.zeros((3, 4)), "hapy", {"happy": [0]}, 0.5), "did you mean 'happy'"),
    (lambda: au_emo_coverage(np.zeros((3, 4)), "happy", {"happy": [0.5]}, 0.5), "integer indices"),
])
def test_au_validation(call, message):
    with pytest.raises(DataError, match=message):
        call()


# ---------------------------------------------------------------------------------------------------- landmarks

LEFT, RIGHT = [0, 1], [2, 3]


def test_eye_lmd_hand_computed():
    # frame 0: eyes at (0,0),(2,0) | (8,0),(10,0) -> centres (1,0), (9,0) -> IOD 8
    # frame 1: everything doubled -> IOD 16
    true = np.array([[[0, 0], [2, 0], [8, 0], [10, 0]],
                     [[0, 0], [4, 0], [16, 0], [20, 0]]], dtype=float)
    np.testing.assert_allclose(inter_ocular_distance(true, LEFT, RIGHT), [8, 16])
    pred = true.copy()
    pred[0, 0] += [3, 4]        # frame 0, point 0: error 5 -> 5/8
    pred[1, 3] += [0, 8]        # frame 1, point 3: error 8 -> 8/16
    # mean over 2 frames x 4 points: (5/8 + 8/16) / 8 = (0.625 + 0.5) / 8 = 0.140625
    assert eye_lmd(pred, true, LEFT, RIGHT) == pytest.approx(0.140625)
    # Scoring only points [0, 3]: (5/8 + 0 + 0 + 8/16) / 4 = 0.28125
    assert eye_lmd(pred, true, LEFT, RIGHT, points=[0, 3]) == pytest.approx(0.28125)


def test_eye_lmd_properties(rng):
    true = rng.normal(size=(6, 10, 2))
    true[:, RIGHT] += [5.0, 0.0]                          # keep the eyes apart
    pred = true + rng.normal(scale=0.1, size=true.shape)
    assert eye_lmd(true, true, LEFT, RIGHT) == 0.0
    base = eye_lmd(pred, true, LEFT, RIGHT)
    rot = np.array([[0.6, -0.8], [0.8, 0.6]])
    assert eye_lmd(3 * pred, 3 * true, LEFT, RIGHT) == pytest.approx(base)                 # scale
    assert eye_lmd(pred @ rot.T + 7, true @ rot.T + 7, LEFT, RIGHT) == pytest.approx(base)  # rotation + shift


@pytest.mark.parametrize("call, message", [
    (lambda: eye_lmd(np.zeros((2, 4, 2)), np.zeros((2, 5, 2)), LEFT, RIGHT), "same shape"),
    (lambda: eye_lmd(np.zeros((2, 4)), np.zeros((2, 4)), LEFT, RIGHT), r"pred must have shape \[T, K, 2\]"),
    (lambda: eye_lmd(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), LEFT, RIGHT), "last axis must be 2 or 3"),
    (lambda: eye_lmd(np.zeros((2, 4, 2)), np.zeros((2, 4, 2)), LEFT, [2, 9]), r"right_eye has indices outside"),
    (lambda: eye_lmd(np.zeros((2, 4, 2)), np.zeros((2, 4, 2)), LEFT, RIGHT), "inter-ocular distance is 0"),
])
def test_landmark_validation(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------------------------------------------ lip sync


def test_audio_rms_envelope_hand_computed():
    wave = np.concatenate([np.full(640, 0.5),            # frame 0: rms 0.5
                           np.tile([2.0, -2.0], 320),    # frame 1: rms 2
                           np.full(320, 3.0)])           # partial frame 2: rms of its 320 samples = 3
    np.testing.assert_allclose(audio_rms_envelope(wave), [0.5, 2.0, 3.0])
    # num_frames=2 cuts the tail; num_frames=4 zero-pads: frame 2 = sqrt(320 * 9 / 640) = 3/sqrt(2), frame 3 = 0
    np.testing.assert_allclose(audio_rms_envelope(wave, num_frames=2), [0.5, 2.0])
    np.testing.assert_allclose(audio_rms_envelope(wave, num_frames=4), [0.5, 2.0, 3 / np.sqrt(2), 0.0])
    # 8 kHz at 25 fps: 320 samples per frame -> frames 0..3: 0.5, 0.5, 2, 2, then 3
    np.testing.assert_allclose(audio_rms_envelope(wave, sample_rate=8000), [0.5, 0.5, 2, 2, 3])


def test_mouth_opening_hand_computed():
    # points: 0 = (0, 0) upper, 1 = (3, 4) lower -> 5; 2 = (10, 0) upper, 3 = (10, 2) lower -> 2; mean 3.5
    kps = np.array([[[0, 0], [3, 4], [10, 0], [10, 2]],
                    [[0, 0], [0, 1], [10, 0], [10, 3]]], dtype=float)   # frame 1: 1 and 3 -> 2
    np.testing.assert_allclose(mouth_opening(kps, [0, 2], [1, 3]), [3.5, 2.0])


def test_lagged_correlation_hand_computed():
    # mouth = [0, 1, 0, 1, 2], env = [1, 0, 1, 2, 0]; lag +1 pairs mouth[1:] = [1, 0, 1, 2] with env[:4] =
    # [1, 0, 1, 2]: identical -> correlation 1.
    # lag 0: mouth [0,1,0,1,2] (mean 0.8) vs env [1,0,1,2,0] (mean 0.8):
    #   deviations m = [-.8, .2, -.8, .2, 1.2], e = [.2, -.8, .2, 1.2, -.8]
    #   sum m*e = -.16 - .16 - .16 + .24 - .96 = -1.2; sum m^2 = sum e^2 = .64+.04+.64+.04+1.44 = 2.8
    #   r = -1.2 / 2.8 = -3/7
    lags, corr = lagged_correlation([0, 1, 0, 1, 2], [1, 0, 1, 2, 0], max_lag=1)
    np.testing.assert_array_equal(lags, [-1, 0, 1])
    assert corr[1] == pytest.approx(-3 / 7)
    assert corr[2] == pytest.approx(1.0)
    assert lipsync_score([0, 1, 0, 1, 2], [1, 0, 1, 2, 0], max_lag=1) == (pytest.approx(1.0), 1)


@pytest.mark.parametrize("shift", [-5, -3, 0, 2, 4])
def test_lipsync_known_shift(shift, rng):
    # mouth(t) = envelope(t - shift): the mouth follows the audio by `shift` frames.
    t = 75
    s = rng.uniform(size=t + 10)
    env = s[5:5 + t]
    mouth = s[5 - shift:5 - shift + t]
    score, lag = lipsync_score(mouth, env)
    assert lag == shift and score == pytest.approx(1.0)
    # Invariant to positive scaling and offsets of either signal.
    assert lipsync_score(3 * mouth + 1, 0.2 * env - 4) == (pytest.approx(1.0), shift)


def test_lipsync_end_to_end_from_waveform_and_keypoints(rng):
    # A 16 kHz waveform whose loudness follows `level`; the mouth opens with the same level 2 frames later.
    t = 40
    level = rng.uniform(0.1, 1.0, size=t)
    wave = np.repeat(level, 640) * np.sign(np.sin(np.arange(640 * t)))
    env = audio_rms_envelope(wave, num_frames=t)
    kps = np.zeros((t, 2, 2))
    kps[2:, 1, 1] = 10 * level[:-2]                       # lower lip drops by the delayed level
    kps[:2, 1, 1] = 5.0
    score, lag = lipsync_score(mouth_opening(kps, [0], [1]), env)
    assert lag == 2 and score > 0.999


def test_lipsync_constant_signal_is_undefined(rng):
    score, lag = lipsync_score(np.ones(20), rng.uniform(size=20))
    assert np.isnan(score) and lag == 0


@pytest.mark.parametrize("call, message", [
    (lambda: lipsync_score(np.zeros(10), np.zeros(11)), "mouth has 10 frames but envelope has 11"),
    (lambda: lipsync_score(np.zeros(7), np.zeros(7)), "7 frames are too few for max_lag=5"),
    (lambda: lipsync_score(np.zeros((10, 1)), np.zeros(10)), r"mouth must have shape \[T\]"),
    (lambda: audio_rms_envelope(np.zeros((640, 2))), "mix multi-channel"),
    (lambda: audio_rms_envelope(np.zeros(640), sample_rate=16001), "not a multiple of fps"),
    (lambda: mouth_opening(np.zeros((3, 4, 2)), [0, 1], [2]), "pair up one-to-one"),
])
def test_lipsync_validation(call, message):
    with pytest.raises(DataError, match=message):
        call()


# ---------------------------------------------------------------------------------------------------- smoothness


def test_jitter_hand_computed():
    # dim 0 = t^2 = [0, 1, 4, 9, 16]: second differences [2, 2, 2] -> 2
    # dim 1 = [0, 1, 1, 1, 1]: first [1, 0, 0, 0], second [-1, 0, 0] -> 1/3
    pose = np.array([[0, 0], [1, 1], [4, 1], [9, 1], [16, 1]], dtype=float)
    per_dim, overall = pose_jitter(pose)
    np.testing.assert_allclose(per_dim, [2, 1 / 3])
    assert overall == pytest.approx(7 / 6)                 # (2 + 1/3) / 2
    # point 0: (0,0) (0,0) (3,4) -> second difference (3,4), norm 5; point 1 moves at constant velocity -> 0
    kps = np.array([[[0, 0], [0, 0]], [[0, 0], [1, 0]], [[3, 4], [2, 0]]], dtype=float)
    assert keypoint_jitter(kps) == pytest.approx(2.5)      # (5 + 0) / 2


def test_seam_and_pflposnet_hand_computed():
    # x = [0, 1, 3, 8, 9, 11, 15], window 3 -> windows [0,1,3] [8,9,11] [15]; seams at t = 3, 6.
    # steps s_1..s_6 = [1, 2, 5, 1, 2, 4]; seam steps s_3 = 5, s_6 = 4; others [1, 2, 1, 2] (median 1.5)
    x = np.array([0, 1, 3, 8, 9, 11, 15], dtype=float)
    np.testing.assert_array_equal(step_sizes(x), [1, 2, 5, 1, 2, 4])
    jump, median, ratio = seam_jump(x, 3)
    assert (jump, median) == (5.0, 1.5) and ratio == pytest.approx(10 / 3)
    assert l_connect(x, 3) == 4.5                          # (5 + 4) / 2
    assert l_sm1(x, 3) == 1.5                              # mean of within-window steps [1, 2, 1, 2]
    assert l_sm1(x) == 2.5                                 # one window: 15 / 6
    # L_sm2 per window of 3 frames: |P3 - P2| - |P2 - P1| = 2 - 1 = 1 in both full windows -> 1
    assert l_sm2(x, 3) == 1.0
    # one window: consecutive step differences [1, 3, -4, 1, 2], sum 3 over w - 2 = 5 terms -> 0.6
    # (telescoping check: (s_6 - s_1) / 5 = (4 - 1) / 5)
    assert l_sm2(x) == pytest.approx(0.6)


def test_step_sizes_on_pose_and_keypoints_hand_computed():
    # pose [T=2, P=2]: |[3, -1]| per dim -> mean (3 + 1) / 2 = 2
    np.testing.assert_allclose(step_sizes([[0, 0], [3, -1]]), [2.0])
    # keypoints [T=2, K=2, 2]: point moves (3, 4) -> 5 and (0, 1) -> 1; mean 3
    np.testing.assert_allclose(step_sizes([[[0, 0], [0, 0]], [[3, 4], [0, 1]]]), [3.0])


def test_smoothness_properties(rng):
    t = np.arange(30, dtype=float)
    line = np.stack([2 * t, -t + 3], axis=1)               # constant velocity
    assert pose_jitter(line).overall == 0.0
    assert keypoint_jitter(np.stack([line, line + 1], axis=1)) == 0.0
    assert l_sm2(line, 10) == 0.0
    jump, median, ratio = seam_jump(line, 10)              # smooth across seams: every step is the same
    assert ratio == pytest.approx(1.0)
    # Scaling: seam ratio invariant, L_connect / L_sm1 scale linearly.
    x = np.cumsum(rng.normal(size=(40, 5, 2)), axis=0)
    x[20:] += 30.0                                         # a visible seam at t = 20
    assert seam_jump(4 * x, 10).ratio == pytest.approx(seam_jump(x, 10).ratio)
    assert seam_jump(x, 10).ratio > 5
    assert l_connect(4 * x, 10) == pytest.approx(4 * l_connect(x, 10))
    assert l_sm1(4 * x, 10) == pytest.approx(4 * l_sm1(x, 10))
    # Static signal: no jumps anywhere -> ratio 1 by convention.
    assert seam_jump(np.zeros(10), 3) == (0.0, 0.0, 1.0)


@pytest.mark.parametrize("call, message", [
    (lambda: seam_jump(np.zeros(5), 5), "window=5 leaves no seam"),
    (lambda: seam_jump(np.zeros(5), 1), "window must be an integer >= 2"),
    (lambda: l_connect(np.zeros(3), 3), "leaves no seam"),
    (lambda: l_sm2(np.zeros(8), 2), "window must be an integer >= 3"),
    (lambda: l_sm2(np.zeros(2)), "at least 3 frames"),
    (lambda: pose_jitter(np.zeros((2, 3))), "at least 3 frame"),
    (lambda: keypoint_jitter(np.zeros((5, 3))), r"kps must have shape \[T, K, 2\]"),
    (lambda: l_sm1(np.zeros((4, 2, 2, 2))), r"x must have shape \[T\], \[T, P\] or \[T, K, D\]"),
])
def test_smoothness_validation(call, message):
    with pytest.raises(MetricInputError, match=message):
        call()


def test_motion_smoothness_by_hand():
    from avatarjax.eval.smoothness import motion_smoothness

    line = np.arange(9.0)
    assert motion_smoothness(line) == 1.0 and motion_smoothness(np.zeros((5, 2))) == 1.0
    # a jump of 2 at frame 3 of a flat track: odd frames 1, 3, 5 (of 0..6); frame 3 is off its neighbours'
    # midpoint (0 + 2) / 2 = 1 by 1, the others by 0 -> mean error 1/3; range 2 -> 1 - (1/3) / 2 = 5/6
    step = np.array([0, 0, 0, 2, 2, 2, 2], float)
    assert motion_smoothness(step) == pytest.approx(5 / 6)
    assert motion_smoothness(step, scale=4.0) == pytest.approx(1 - (1 / 3) / 4)
    with pytest.raises(MetricInputError, match="motion_smoothness: scale"):
        motion_smoothness(step, scale=0.0)
