"""Evaluation metrics for talking-avatar outputs: arrays in, floats/arrays out (numpy + scipy only, no JAX).

Frames are at 25 fps. AU trajectories are ``[T, U]``, keypoints ``[T, K, 2]``, pose ``[T, P]``, audio a 16 kHz
mono waveform (640 samples per video frame) or a per-frame envelope ``[T]``. Bad inputs raise
:class:`MetricInputError`, a subclass of both :class:`avatarjax.errors.DataError` and :class:`ValueError`, whose
message names the function, the argument and the problem.

Modules: :mod:`~avatarjax.eval.au` (AU-F1, AU-Temp, AU_Emo coverage), :mod:`~avatarjax.eval.landmarks`
(Eye-LMD), :mod:`~avatarjax.eval.lipsync` (lagged mouth/audio correlation), :mod:`~avatarjax.eval.smoothness`
(jitter, seam jumps, PFLPosNet losses), :mod:`~avatarjax.eval.dtw` (dynamic time warping),
:mod:`~avatarjax.eval.react` (REACT challenge metrics: FRCorr, FRDist, FRDiv, FRVar, FRDvs, FRSyn, FRRea).
"""

from avatarjax.eval.au import PRF, AUF1Summary, au_activations, au_emo_coverage, au_f1, au_f1_dataset, au_temp
from avatarjax.eval.dtw import MetricInputError, dtw_cost_matrix, dtw_distance
from avatarjax.eval.landmarks import eye_lmd, inter_ocular_distance
from avatarjax.eval.lipsync import audio_rms_envelope, lagged_correlation, lipsync_score, mouth_opening
from avatarjax.eval.react import (REACT_DIM_GROUPS, REACT_DIMS, REACT_MAX_LAG, AppropriatePool, appropriate_sets,
                                  concordance_cc, fr_corr, fr_dist, fr_div, fr_dvs, fr_rea, fr_syn, fr_var,
                                  frechet_distance, react_metrics, tlcc_lags, weighted_dtw)
from avatarjax.eval.smoothness import (PoseJitter, SeamJump, keypoint_jitter, l_connect, l_sm1, l_sm2,
                                       pose_jitter, seam_jump, step_sizes)

__all__ = [
    "MetricInputError",
    # AU
    "PRF", "AUF1Summary", "au_activations", "au_f1", "au_f1_dataset", "au_temp", "au_emo_coverage",
    # DTW
    "dtw_distance", "dtw_cost_matrix",
    # landmarks
    "inter_ocular_distance", "eye_lmd",
    # lip sync
    "audio_rms_envelope", "mouth_opening", "lagged_correlation", "lipsync_score",
    # smoothness
    "PoseJitter", "SeamJump", "keypoint_jitter", "pose_jitter", "step_sizes", "seam_jump",
    "l_connect", "l_sm1", "l_sm2",
    # REACT challenge
    "REACT_DIMS", "REACT_DIM_GROUPS", "REACT_MAX_LAG", "AppropriatePool", "appropriate_sets", "concordance_cc",
    "fr_corr", "weighted_dtw", "fr_dist", "fr_div", "fr_var", "fr_dvs", "tlcc_lags", "fr_syn", "frechet_distance",
    "fr_rea", "react_metrics",
]
