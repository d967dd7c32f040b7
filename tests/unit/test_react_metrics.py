"""avatarjax.eval.react: REACT challenge metrics on tiny hand-computed arrays, against plain loop references, errors.

Every expected number is derived by hand in the comment next to it, or by a plain reference written in this file
(an O(T^2) dynamic programme for DTW, a per-lag per-dim ``np.corrcoef`` loop for TLCC), never by the code under test.
"""

import numpy as np
import pytest

from avatarjax.errors import ConfigError, DataError
from avatarjax.eval import (REACT_DIM_GROUPS, REACT_DIMS, AppropriatePool, MetricInputError, concordance_cc,
                            dtw_distance, fr_corr, fr_dist, fr_div, fr_dvs, fr_rea, fr_syn, fr_var, frechet_distance,
                            react_metrics, tlcc_lags, weighted_dtw)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _clip(*frames_by_dim):
    """A ``[T, D]`` track from per-dim lists of frame values."""
    return np.array(frames_by_dim, dtype=float).T


# ------------------------------------------------------------------------------------------------- layout


def test_dims_and_groups():
    assert len(REACT_DIMS) == 25 and REACT_DIMS[14] == "AU26" and REACT_DIMS[15:17] == ("valence", "arousal")
    assert REACT_DIM_GROUPS == ((0, 15, 1 / 15), (15, 17, 1.0), (17, 25, 1 / 8))


# ---------------------------------------------------------------------------------------------------- CCC


def test_ccc_hand_computed():
    # x = [1, 2, 3], y = [2, 4, 6]: means 2 and 4; population var 2/3 and 8/3; cov = (2 + 0 + 2) / 3 = 4/3.
    # CCC = 2 * 4/3 / (2/3 + 8/3 + (2 - 4)^2) = (8/3) / (22/3) = 4/11.
    assert concordance_cc([1, 2, 3], [2, 4, 6]) == pytest.approx(4 / 11, abs=1e-7)
    # Identical non-constant series: 2 var / (2 var + 1e-8) ~ 1; reversed: cov = -var -> -1.
    np.testing.assert_allclose(concordance_cc(_clip([1, 2, 3], [1, 2, 3]), _clip([1, 2, 3], [3, 2, 1])),
                               [1.0, -1.0], atol=1e-7)
    # A constant series has no correlation: the released code zeroes it (nan_to_num), so CCC = 0, not NaN.
    assert concordance_cc([5, 5, 5], [1, 2, 3]) == 0.0
    assert concordance_cc([5, 5, 5], [5, 5, 5]) == 0.0


# ------------------------------------------------------------------------------------------------- FRCorr


def _frcorr_example():
    # One clip, K = 2 reactions, T = 3 frames, D = 2 dims; two appropriate real reactions A and B.
    pred = np.stack([_clip([1, 2, 3], [1, 2, 3]), _clip([5, 5, 5], [1, 2, 3])])[None]     # [1, 2, 3, 2]
    real_a = _clip([1, 2, 3], [2, 4, 6])
    real_b = _clip([3, 2, 1], [1, 2, 3])
    return pred, np.stack([real_a, real_b])


def test_fr_corr_hand_computed():
    pred, reals = _frcorr_example()
    # reaction 0 vs A: dims (1, 4/11) -> mean 15/22;  vs B: dims (-1, 1) -> mean 0;          max 15/22
    # reaction 1 vs A: dims (0 (constant), 4/11) -> 2/11;  vs B: dims (0, 1) -> 1/2;         max 1/2
    # FRCorr = sum over reactions = 15/22 + 11/22 = 13/11 (one clip, so no averaging over clips).
    assert fr_corr(pred, [reals]) == pytest.approx(13 / 11, abs=1e-6)


def test_fr_corr_averages_clips_and_accepts_a_pool():
    pred, reals = _frcorr_example()
    # Clip 1 repeats clip 0 but only B is appropriate: 0 + 1/2 = 1/2.  Mean over clips: (13/11 + 1/2) / 2 = 37/44.
    pred2 = np.concatenate([pred, pred])
    expected = 37 / 44
    assert fr_corr(pred2, [reals, reals[1:]]) == pytest.approx(expected, abs=1e-6)
    pool = AppropriatePool(reactions=np.stack([reals[1], np.zeros((3, 2)), reals[0]]),
                           matrix=np.array([[1, 0, 1], [1, 0, 0]]))
    assert fr_corr(pred2, pool) == pytest.approx(expected, abs=1e-6)
    assert fr_corr(pred2, AppropriatePool(pool.reactions, pool.matrix.astype(bool))) == pytest.approx(expected,
                                                                                                    abs=1e-6)


def test_fr_corr_matches_a_loop_reference(rng):
    pred = rng.normal(size=(3, 4, 20, 25))
    pred[0, 1, :, 3] = 0.5                                            # a constant dim
    sets = [rng.normal(size=(m, 20, 25)) for m in (1, 3, 2)]

    def ccc_loop(x, y):                                               # the released formula, one dim at a time
        total = 0.0
        for d in range(x.shape[1]):
            with np.errstate(invalid="ignore", divide="ignore"):
                cor = np.nan_to_num(np.corrcoef(x[:, d], y[:, d])[0, 1])
            num = 2 * cor * x[:, d].std() * y[:, d].std()
            den = x[:, d].var() + y[:, d].var() + (x[:, d].mean() - y[:, d].mean()) ** 2
            total += num / (den + 1e-8)
        return total / x.shape[1]

    expected = np.mean([sum(max(ccc_loop(real, pred[n, k]) for real in sets[n]) for k in range(4))
                        for n in range(3)])
    assert fr_corr(pred, sets) == pytest.approx(expected, rel=1e-10)


# ------------------------------------------------------------------------------------------------- FRDist


def _dtw_reference(x, y, cost):
    """Plain O(T1 T2) dynamic programme: D[i, j] = c(i, j) + min(D[i-1, j-1], D[i-1, j], D[i, j-1])."""
    t1, t2 = len(x), len(y)
    table = np.full((t1 + 1, t2 + 1), np.inf)
    table[0, 0] = 0.0
    for i in range(1, t1 + 1):
        for j in range(1, t2 + 1):
            table[i, j] = cost(x[i - 1], y[j - 1]) + min(table[i - 1, j - 1], table[i - 1, j], table[i, j - 1])
    return table[t1, t2]


def _weighted_reference(x, y, groups, metric):
    total = 0.0
    for start, stop, weight in groups:
        a, b = x[:, start:stop], y[:, start:stop]
        if metric == "sqeuclidean":                                   # tslearn: sqrt of the summed squared costs
            total += weight * np.sqrt(_dtw_reference(a, b, lambda u, v: float(np.sum((u - v) ** 2))))
        else:
            total += weight * _dtw_reference(a, b, lambda u, v: float(np.sum(np.abs(u - v))))
    return total


def test_weighted_dtw_hand_computed():
    # One dim, x = [0, 2], y = [1, 1]: every squared cost is 1; the cheapest path is the diagonal (2 cells) -> sqrt 2.
    assert weighted_dtw([[0.0], [2.0]], [[1.0], [1.0]], groups=((0, 1, 1.0),)) == pytest.approx(np.sqrt(2))
    # x = [0, 0, 1] vs y = [0, 1]: warp (0,0) (1,0) (2,1) costs 0 -> 0 for any weight.
    assert weighted_dtw([[0.0], [0.0], [1.0]], [[0.0], [1.0]], groups=((0, 1, 3.0),)) == pytest.approx(0.0, abs=1e-7)
    # Two groups: dims 0-1 (weight 0.5) and dim 2 (weight 2). x = [[0, 0, 0], [3, 4, 1]], y = [[0, 0, 0], [0, 0, 0]]
    # group 1 squared costs: c = [[0, 0], [25, 25]] -> D11 = 25 + min(0, 0, 25) = 25 -> sqrt = 5, times 0.5 = 2.5
    # group 2 squared costs: c = [[0, 0], [1, 1]]   -> 1 -> sqrt = 1, times 2 = 2;  total 4.5.
    x, y = [[0, 0, 0], [3, 4, 1]], [[0, 0, 0], [0, 0, 0]]
    assert weighted_dtw(x, y, groups=((0, 2, 0.5), (2, 3, 2.0))) == pytest.approx(4.5)
    # L1 frame cost instead: group 1 c = [[0, 0], [7, 7]] -> 7 * 0.5 = 3.5; group 2 -> 1 * 2 = 2; total 5.5.
    assert weighted_dtw(x, y, groups=((0, 2, 0.5), (2, 3, 2.0)), metric="l1") == pytest.approx(5.5)


@pytest.mark.parametrize("metric", ["sqeuclidean", "l1"])
def test_weighted_dtw_matches_plain_dp_with_react_weights(rng, metric):
    x, y = rng.normal(size=(7, 25)), rng.normal(size=(9, 25))
    expected = _weighted_reference(x, y, REACT_DIM_GROUPS, metric)
    assert weighted_dtw(x, y, metric=metric) == pytest.approx(expected, rel=1e-9)


def test_weighted_dtw_l1_agrees_with_dtw_distance(rng):
    x, y = rng.normal(size=(6, 25)), rng.normal(size=(5, 25))
    expected = sum(w * dtw_distance(x[:, a:b], y[:, a:b]) for a, b, w in REACT_DIM_GROUPS)
    assert weighted_dtw(x, y, metric="l1") == pytest.approx(expected, rel=1e-12)


def test_fr_dist_hand_computed():
    # D = 2 with groups dim 0 (weight 1) and dim 1 (weight 1/2); T = 2; one clip, K = 2; appropriate A and B.
    groups = ((0, 1, 1.0), (1, 2, 0.5))
    pred = np.stack([_clip([0, 2], [0, 0]), _clip([1, 1], [1, 1])])[None]
    real_a = _clip([0, 0], [0, 0])
    real_b = _clip([0, 2], [1, 1])
    # reaction 0 vs A: dim 0 [0, 2] vs [0, 0]: c = [[0, 0], [4, 4]] -> 4 -> 2; dim 1: 0.          total 2
    # reaction 0 vs B: dim 0 identical -> 0; dim 1 [0, 0] vs [1, 1]: diagonal 1 + 1 -> sqrt 2 * 0.5  -> sqrt(2)/2
    # reaction 1 vs A: each dim has all costs 1 -> sqrt 2 per dim -> sqrt 2 + sqrt(2)/2             -> 1.5 sqrt 2
    # reaction 1 vs B: dim 0 [1, 1] vs [0, 2]: costs all 1 -> sqrt 2; dim 1 identical -> 0          -> sqrt 2
    # FRDist = min(2, sqrt(2)/2) + min(1.5 sqrt 2, sqrt 2) = 1.5 sqrt 2.
    value = fr_dist(pred, [np.stack([real_a, real_b])], groups=groups)
    assert value == pytest.approx(1.5 * np.sqrt(2), abs=1e-7)


def test_fr_dist_matches_loop_reference_and_pool(rng):
    pred = rng.normal(size=(2, 3, 8, 25))
    pool = rng.normal(size=(4, 10, 25))                               # real reactions may be longer
    matrix = np.array([[1, 0, 1, 1], [0, 1, 0, 0]])
    expected = np.mean([sum(min(_weighted_reference(pred[n, k], pool[p], REACT_DIM_GROUPS, "sqeuclidean")
                                for p in np.flatnonzero(matrix[n])) for k in range(3)) for n in range(2)])
    assert fr_dist(pred, AppropriatePool(pool, matrix)) == pytest.approx(expected, rel=1e-9)
    assert fr_dist(pred, [pool[[0, 2, 3]], pool[1]]) == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------------------------------- FRDiv, FRVar, FRDvs


def test_fr_div_hand_computed():
    # K = 2, T = 1, D = 2: z0 = [0, 0], z1 = [1, 2]; ||z0 - z1||^2 = 5 over 2 ordered pairs -> 10 / (2 * 1 * 2) = 2.5
    assert fr_div(np.array([[[[0.0, 0.0]], [[1.0, 2.0]]]])) == pytest.approx(2.5)
    # K = 3, T = 1, D = 1: values 0, 1, 3 -> squared gaps 1, 9, 4; ordered pairs 28 / (3 * 2 * 1) = 14/3.
    # A second clip with identical reactions scores 0, so the mean over clips is 7/3.
    pred = np.array([[[[0.0]], [[1.0]], [[3.0]]], [[[2.0]], [[2.0]], [[2.0]]]])
    assert fr_div(pred) == pytest.approx(7 / 3)


def test_fr_div_is_zero_for_identical_predictions(rng):
    one = rng.uniform(size=(1, 1, 30, 25)) * 0.1 + 0.3
    assert fr_div(np.repeat(np.repeat(one, 10, axis=1), 3, axis=0)) == 0.0


def test_fr_var_hand_computed():
    # dims [1, 2, 3] (mean 2, squares 1 + 0 + 1 = 2, / (3 - 1) = 1) and [0, 0, 3] (mean 1, 1 + 1 + 4 = 6, / 2 = 3)
    assert fr_var(_clip([1, 2, 3], [0, 0, 3])[None, None]) == pytest.approx(2.0)


def test_fr_dvs_hand_computed():
    # N = 2, K = 2, T = 1, D = 2. Reaction 0: [0, 0] vs [1, 2] -> 5, twice (ordered pairs) = 10.
    # Reaction 1: identical across clips -> 0.  FRDvs = 10 / (N (N - 1) K T D) = 10 / (2 * 1 * 2 * 1 * 2) = 1.25.
    pred = np.array([[[[0.0, 0.0]], [[7.0, 7.0]]], [[[1.0, 2.0]], [[7.0, 7.0]]]])
    assert fr_dvs(pred) == pytest.approx(1.25)


def test_diversity_metrics_match_pairwise_loops(rng):
    pred = rng.normal(size=(4, 3, 5, 2))
    n, k, t, d = pred.shape
    z = pred.reshape(n, k, t * d)
    div = np.mean([sum(np.sum((z[i, a] - z[i, b]) ** 2) for a in range(k) for b in range(k) if a != b)
                   / (k * (k - 1) * t * d) for i in range(n)])
    dvs = sum(np.sum((z[i, c] - z[j, c]) ** 2) for c in range(k) for i in range(n) for j in range(n) if i != j)
    dvs /= n * (n - 1) * k * t * d
    assert fr_div(pred) == pytest.approx(div, rel=1e-12)
    assert fr_dvs(pred) == pytest.approx(dvs, rel=1e-12)


# ---------------------------------------------------------------------------------------------------- FRSyn


def test_tlcc_hand_computed_lag():
    # speaker s = [0, 1, 0, 0], reaction p = [0, 0, 1, 0] (one frame later), max_lag = 1:
    #   L = +1: p[1:] = [0, 1, 0] vs s[:3] = [0, 1, 0]          -> r = 1
    #   L =  0: centred p = [-.25, -.25, .75, -.25], s = [-.25, .75, -.25, -.25]: dot -.25 / .75 -> r = -1/3
    #   L = -1: p[:3] = [0, 0, 1] vs s[1:] = [1, 0, 0]           -> r = -1/2
    # The peak is at L = +1 (the reaction follows the speaker by one frame).
    pred = np.array([0.0, 0.0, 1.0, 0.0]).reshape(1, 1, 4, 1)
    speaker = np.array([0.0, 1.0, 0.0, 0.0]).reshape(1, 4, 1)
    assert tlcc_lags(pred, speaker, max_lag=1).tolist() == [[1]]
    assert fr_syn(pred, speaker, max_lag=1) == 1.0


def test_fr_syn_finds_known_shifts(rng):
    t = 200
    base = rng.normal(size=(t + 100, 3))
    speaker = base[50:50 + t][None]                                   # [1, T, 3]
    shifts = [5, -7, 0, 49]
    # pred[t] = speaker[t - L]  <=>  pred = base[50 - L : 50 - L + T]
    pred = np.stack([base[50 - s:50 - s + t] for s in shifts])[None]  # [1, 4, T, 3]
    assert tlcc_lags(pred, speaker).tolist() == [shifts]
    assert fr_syn(pred, speaker) == pytest.approx(np.mean(np.abs(shifts)))


def test_fr_syn_constant_dim_official_vs_omit(rng):
    t = 120
    base = rng.normal(size=(t + 20, 2))
    speaker = np.concatenate([base[10:10 + t], np.zeros((t, 1))], axis=1)[None]
    pred = np.concatenate([base[7:7 + t], np.zeros((t, 1))], axis=1)[None, None]     # follows by 3 frames
    # The constant third dim makes every Pearson mean NaN; the released code's argmax then returns the first lag,
    # -49, so |lag| = 49. Omitting undefined dims recovers the true lag.
    assert fr_syn(pred, speaker) == 49.0
    assert fr_syn(pred, speaker, nan_policy="omit") == 3.0
    assert fr_syn(np.zeros_like(pred), speaker, nan_policy="omit") == 49.0           # nothing defined at all


def test_tlcc_matches_per_lag_corrcoef_loop(rng):
    n, k, t, d, max_lag = 2, 3, 40, 4, 12
    pred, speaker = rng.normal(size=(n, k, t, d)), rng.normal(size=(n, t, d))
    pred[0, 1, :30, 2] = 0.0                                          # constant in the windows of some lags only
    speaker[1, :, 0] = 0.25                                           # constant everywhere

    def reference(p, s):                                              # the released code's structure
        rs = []
        for lag in range(-max_lag, max_lag + 1):
            a, b = (p[lag:], s[:t - lag]) if lag >= 0 else (p[:t + lag], s[-lag:])
            with np.errstate(invalid="ignore", divide="ignore"):
                rs.append(np.mean([np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(d)]))
        return int(np.argmax(rs)) - max_lag

    expected = [[reference(pred[i, j], speaker[i]) for j in range(k)] for i in range(n)]
    assert tlcc_lags(pred, speaker, max_lag=max_lag).tolist() == expected
    assert expected[1] == [-max_lag] * k and expected[0][1] != expected[0][0]    # the cases above are exercised


# ---------------------------------------------------------------------------------------------------- FRRea


def test_frechet_distance_hand_computed():
    # 1-D features: real [0, 2] -> mean 1, unbiased var 2; generated [1, 5] -> mean 3, var 8.
    # FID = (1 - 3)^2 + 2 + 8 - 2 sqrt(2 * 8) = 4 + 10 - 8 = 6.
    assert fr_rea([[0.0], [2.0]], [[1.0], [5.0]]) == pytest.approx(6.0)
    # Gaussians with S1 = diag(1, 4), S2 = diag(4, 1): sqrt(S1 S2) = diag(2, 2); tr = 5 + 5 - 8 = 2; means equal.
    assert frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.zeros(2), np.diag([4.0, 1.0])) == pytest.approx(2.0)


def test_fr_rea_with_encoder_and_without():
    real = np.stack([np.full((4, 4, 3), v) for v in (0.0, 2.0)])          # [2, H, W, C] frames
    generated = np.stack([np.full((4, 4, 3), v) for v in (1.0, 5.0)])

    def encoder(batch):                                                   # mean intensity as a 1-d feature
        return np.asarray(batch).reshape(len(batch), -1).mean(axis=1, keepdims=True)

    assert fr_rea(real, generated, encoder=encoder, batch_size=1) == pytest.approx(6.0)
    with pytest.raises(ConfigError, match=r"fr_rea: real looks like frames .* pass encoder="):
        fr_rea(real, generated)
    with pytest.raises(ConfigError, match="fr_rea: encoder must be a callable"):
        fr_rea(real, generated, encoder="inception.pth")


# ------------------------------------------------------------------------------------------------- all at once


def test_react_metrics_matches_the_individual_metrics(rng):
    pred = rng.uniform(size=(3, 4, 60, 25))
    speaker = rng.uniform(size=(3, 60, 25))
    pool = AppropriatePool(rng.uniform(size=(5, 60, 25)), np.array([[1, 1, 0, 0, 0], [0, 0, 1, 0, 1], [1, 0, 0, 0, 1]]))
    out = react_metrics(pred, speaker, pool, max_lag=10, realism=([[0.0], [2.0]], [[1.0], [5.0]]))
    assert out == pytest.approx({
        "FRCorr": fr_corr(pred, pool), "FRDist": fr_dist(pred, pool), "FRDiv": fr_div(pred), "FRVar": fr_var(pred),
        "FRDvs": fr_dvs(pred), "FRSyn": fr_syn(pred, speaker, max_lag=10), "FRRea": 6.0}, rel=1e-12)
    single = react_metrics(pred[:1, :1], speaker[:1], [pool.reactions[:2]], max_lag=10)
    assert np.isnan(single["FRDiv"]) and np.isnan(single["FRDvs"]) and "FRRea" not in single


# ------------------------------------------------------------------------------------------------------ errors


def test_error_is_data_error():
    with pytest.raises(DataError):
        fr_var(np.zeros((2, 3)))


@pytest.mark.parametrize("call, message", [
    (lambda: fr_corr(np.zeros((2, 3, 25)), [np.zeros((1, 3, 25))] * 2),
     r"fr_corr: pred must have shape \[N, K, T, D\]"),
    (lambda: fr_dist(np.zeros((2, 1, 3, 25)), [np.zeros((1, 3, 25))] * 3),
     "fr_dist: appropriate has 3 entries but pred has N=2 clips"),
    (lambda: fr_dist(np.zeros((1, 1, 3, 25)), [np.zeros((1, 3, 24))]),
     r"fr_dist: appropriate\[0\] must have shape .* D=25"),
    (lambda: fr_corr(np.zeros((1, 1, 3, 25)), [np.zeros((1, 4, 25))]),
     "fr_corr: appropriate.0. has T=4 frames but pred has T=3"),
    (lambda: fr_corr(np.zeros((2, 1, 3, 2)), AppropriatePool(np.zeros((3, 3, 2)), np.array([[1, 0, 0], [0, 0, 0]]))),
     r"fr_corr: appropriate.matrix rows \[1\] mark no appropriate reaction"),
    (lambda: fr_corr(np.zeros((2, 1, 3, 2)), AppropriatePool(np.zeros((3, 3, 2)), np.ones((2, 4)))),
     r"fr_corr: appropriate.matrix must have shape \[N, P\] = \(2, 3\)"),
    (lambda: fr_corr(np.zeros((1, 1, 3, 2)), AppropriatePool(np.zeros((2, 3, 2)), np.array([[0.5, 1]]))),
     "fr_corr: appropriate.matrix must hold only 0/1"),
    (lambda: fr_dist(np.zeros((1, 1, 3, 2)), [np.zeros((1, 3, 2))]),
     "fr_dist: groups must be non-empty .* D=2"),
    (lambda: fr_dist(np.zeros((1, 1, 3, 25)), [np.zeros((1, 3, 25))], metric="euclid"),
     "fr_dist: unknown metric 'euclid'"),
    (lambda: fr_div(np.zeros((2, 1, 3, 25))), "fr_div: pred needs K >= 2"),
    (lambda: fr_dvs(np.zeros((1, 2, 3, 25))), "fr_dvs: pred needs N >= 2"),
    (lambda: fr_var(np.full((1, 2, 3, 25), np.nan)), "fr_var: pred contains NaN or Inf"),
    (lambda: fr_var(np.zeros((1, 2, 1, 25))), r"fr_var: pred must have shape .* T >= 2"),
    (lambda: fr_syn(np.zeros((1, 2, 60, 25)), np.zeros((1, 59, 25))),
     r"fr_syn: speaker must have shape \[N, T, D\] = \(1, 60, 25\)"),
    (lambda: fr_syn(np.zeros((1, 2, 50, 25)), np.zeros((1, 50, 25))), "fr_syn: pred has T=50 frames but max_lag=49"),
    (lambda: fr_syn(np.zeros((1, 2, 60, 25)), np.zeros((1, 60, 25)), nan_policy="omitt"),
     "fr_syn: unknown nan_policy 'omitt': did you mean 'omit'"),
    (lambda: tlcc_lags(np.zeros((1, 2, 60, 25)), np.zeros((1, 60, 25)), max_lag=-1),
     "tlcc_lags: max_lag must be an integer >= 0"),
    (lambda: fr_rea([[0.0, 1.0], [1.0, 0.0]], [[0.0], [1.0]]), "fr_rea: real and generated features must have"),
    (lambda: fr_rea([[0.0]], [[0.0], [1.0]]), r"fr_rea: real needs at least 2 frame"),
    (lambda: react_metrics(np.zeros((1, 2, 60, 25)), np.zeros((2, 60, 25)), [np.zeros((1, 60, 25))]),
     "react_metrics: speaker must have shape"),
    (lambda: react_metrics(np.zeros((1, 2, 60, 25)), np.zeros((1, 60, 25)), [np.zeros((1, 60, 25))], realism=[1]),
     "react_metrics: realism must be a .real, generated. pair"),
])
def test_bad_inputs_name_the_function_and_argument(call, message):
    with pytest.raises(MetricInputError, match=message):
        call()
