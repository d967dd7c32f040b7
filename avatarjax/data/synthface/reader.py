"""The exact keypoint reader: recover the 24-channel face state from keypoints by fitting the renderer's model.

``read_state(keypoints, identity)`` inverts ``geometry.keypoints`` frame by frame, vectorised over frames:

1. Rigid initialisation: an affine camera fitted by linear least squares to the 8 ``geometry.STABLE`` points
   (eye corners, top contour points), which no expression channel moves, then orthonormalised into a rotation,
   a scale and a translation. On clean keypoints this is already the exact pose.
2. Joint fit on the 81 points gaze does not move: projected Gauss-Newton over yaw/pitch/roll, scale, tx, ty and
   the 14 linear channels (10 AU + 4 mouth). Each step solves the normal equations as a box-constrained
   quadratic program (an active-set method, vectorised over frames) so the linear channels stay in their
   ``schema.RANGES``; the pose is unconstrained.
3. Gaze, with the pose known: each pupil gives the eyeball direction in closed form (the image constrains two
   components, the unit norm the third), then Gauss-Newton over the horizontal/vertical angle on all 18
   iris/pupil points of both eyes. Gaze is written back canonically: of ``gaze_left``/``gaze_right`` (and of
   ``gaze_up``/``gaze_down``) at most one is non-zero.

On clean keypoints the recovered state matches the generating one to float32 precision (~1e-5 on AU/mouth,
~1e-4 degrees on pose); tests/unit/test_synthface_render.py measures it.
"""

from __future__ import annotations

import numpy as np

from avatarjax.data.synthface import geometry as geo
from avatarjax.data.synthface import schema
from avatarjax.data.synthface.identity import Identity

_RIGID = 6  # yaw, pitch, roll (radians), scale, tx, ty
_FIT_POINTS = geo.NON_EYEBALL


def _as_keypoint_frames(keypoints: np.ndarray) -> tuple[np.ndarray, bool]:
    k = np.asarray(keypoints, np.float64)
    if k.shape[-2:] != (geo.NUM_KEYPOINTS, 2) or k.ndim not in (2, 3):
        raise ValueError(f"keypoints are [T, {geo.NUM_KEYPOINTS}, 2] or [{geo.NUM_KEYPOINTS}, 2], got {k.shape}")
    return (k[None], True) if k.ndim == 2 else (k, False)


# ------------------------------------------------------------------------------------------------ box QP
def box_qp(hessian: np.ndarray, gradient: np.ndarray, lo: np.ndarray, hi: np.ndarray,
           max_iterations: int | None = None) -> np.ndarray:
    """Minimise ``0.5 x'Hx - g'x`` subject to ``lo <= x <= hi``, for a batch; returns ``x [T, n]``.

    hessian ``[T, n, n]`` (symmetric positive definite), gradient ``[T, n]``, lo/hi ``[n]`` or ``[T, n]`` (may be
    infinite). A primal active-set method run on all frames at once: fix the free variables that leave their box,
    release a fixed variable whose multiplier has the wrong sign, re-solve, until no frame changes.
    """
    t, n = gradient.shape
    scale = 1.0 / np.sqrt(np.maximum(np.einsum("tii->ti", hessian), 1e-300))  # Jacobi scaling: unit diagonal
    h = hessian * scale[:, :, None] * scale[:, None, :]
    g = gradient * scale
    lo = np.broadcast_to(lo, (t, n)) / scale
    hi = np.broadcast_to(hi, (t, n)) / scale
    at_lo, at_hi = np.zeros((t, n), bool), np.zeros((t, n), bool)
    eye, tol = np.eye(n), 1e-10
    x = np.zeros((t, n))
    for _ in range(max_iterations or 4 * n + 4):
        fixed = at_lo | at_hi
        free = ~fixed
        x_fixed = np.where(at_lo, lo, np.where(at_hi, hi, 0.0))
        system = np.where(free[:, :, None] & free[:, None, :], h, 0.0) + eye * fixed[:, :, None]
        rhs = np.where(free, g - np.einsum("tij,tj->ti", h, x_fixed), x_fixed)
        x = np.linalg.solve(system, rhs[..., None])[..., 0]
        below, above = free & (x < lo - tol), free & (x > hi + tol)
        infeasible = (below | above).any(-1, keepdims=True)
        grad = np.einsum("tij,tj->ti", h, x) - g  # >= 0 at a lower bound, <= 0 at an upper bound when optimal
        wrong = np.where(at_lo, -grad, np.where(at_hi, grad, -np.inf))
        worst = wrong.argmax(-1)
        release = (~infeasible[:, 0]) & (wrong[np.arange(t), worst] > tol)
        if not infeasible.any() and not release.any():
            break
        at_lo |= below & infeasible
        at_hi |= above & infeasible
        rows = np.flatnonzero(release)
        at_lo[rows, worst[rows]] = False
        at_hi[rows, worst[rows]] = False
    return np.clip(x, lo, hi) * scale


# ---------------------------------------------------------------------------------------------- rigid init
def _affine_pose(observed: np.ndarray, model_points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotation ``[T, 3, 3]``, scale ``[T]`` (1 + depth) and translation ``[T, 2]`` from an affine camera fit.

    observed ``[T, P, 2]`` image points of the head-frame points ``model_points [P, 3]`` (P >= 4, not coplanar).
    """
    design = np.concatenate([model_points, np.ones((len(model_points), 1))], 1)  # [P, 4]
    affine = np.einsum("kp,tpj->tkj", np.linalg.pinv(design), observed)       # [T, 4, 2]
    rows = np.stack([affine[:, :3, 0], -affine[:, :3, 1]], 1) / geo.IMAGE_SCALE  # [T, 2, 3] = s * R[:2]
    u, sv, vt = np.linalg.svd(rows, full_matrices=False)
    r12 = u @ vt  # nearest pair of orthonormal rows
    rotation = np.concatenate([r12, np.cross(r12[:, 0], r12[:, 1])[:, None]], 1)
    return rotation, sv.mean(-1), affine[:, 3] - 0.5


# ----------------------------------------------------------------------------------------- joint fit
def _model_and_jacobian(params: np.ndarray, points: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projected points ``[T, P*2]`` and Jacobian ``[T, P*2, 6 + 14]`` for params ``[T, 20]``.

    params: yaw, pitch, roll (radians), scale, tx, ty, then the 14 linear channels; points ``[P, 3]``,
    basis ``[14, P, 3]``.
    """
    angles = np.rad2deg(params[:, :3])
    scale, shift, coeffs = params[:, 3], params[:, 4:6], params[:, _RIGID:]
    deformed = points + np.einsum("tc,cpd->tpd", coeffs, basis)                       # [T, P, 3]
    rotation = geo.rotation_matrix(*angles.T)                                          # [T, 3, 3]
    rotated = np.einsum("tij,tpj->tpi", rotation, deformed)
    flip = np.array([1.0, -1.0])
    k = geo.IMAGE_SCALE * scale[:, None, None]
    projected = 0.5 + shift[:, None] + k * rotated[..., :2] * flip                     # [T, P, 2]
    d_angles = np.einsum("taij,tpj->tpia", geo.rotation_jacobian(*angles.T), deformed)[..., :2, :]
    d_angles = k[..., None] * d_angles * flip[:, None]                                 # [T, P, 2, 3]
    d_scale = (geo.IMAGE_SCALE * rotated[..., :2] * flip)[..., None]                   # [T, P, 2, 1]
    d_shift = np.broadcast_to(np.eye(2), rotated.shape[:2] + (2, 2))                  # [T, P, 2, 2]
    d_coeffs = np.einsum("tij,cpj->tpic", rotation, basis)[..., :2, :]
    d_coeffs = k[..., None] * d_coeffs * flip[:, None]                                 # [T, P, 2, 14]
    jac = np.concatenate([d_angles, d_scale, d_shift, d_coeffs], -1)
    t, p = projected.shape[:2]
    return projected.reshape(t, 2 * p), jac.reshape(t, 2 * p, -1)


def _fit_expression_and_pose(observed: np.ndarray, model: geo.FaceModel, iterations: int) -> np.ndarray:
    """Params ``[T, 20]`` (see ``_model_and_jacobian``) fitted to ``observed [T, 99, 2]``."""
    t = len(observed)
    rotation, scale, shift = _affine_pose(observed[:, geo.STABLE], model.points[geo.STABLE])
    angles = np.deg2rad(np.stack(geo.angles_from_rotation(rotation), -1))
    params = np.concatenate([angles, scale[:, None], shift, np.zeros((t, geo.NUM_LINEAR))], -1)
    points, basis = model.points[_FIT_POINTS], model.basis[:, _FIT_POINTS]
    target = observed[:, _FIT_POINTS].reshape(t, -1)
    lo = np.concatenate([np.full(_RIGID, -np.inf), geo.LINEAR_LOW])
    hi = np.concatenate([np.full(_RIGID, np.inf), geo.LINEAR_HIGH])
    for _ in range(iterations):
        projected, jac = _model_and_jacobian(params, points, basis)
        residual = target - projected
        hessian = np.einsum("tki,tkj->tij", jac, jac)
        hessian += 1e-12 * np.eye(hessian.shape[-1]) * np.einsum("tii->t", hessian)[:, None, None]
        step = box_qp(hessian, np.einsum("tki,tk->ti", jac, residual), lo - params, hi - params)
        params = params + step
        if np.abs(step).max() < 1e-9:
            break
    return params


# ---------------------------------------------------------------------------------------------------- gaze
def _camera_rows(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 2x3 image map ``A [T, 2, 3]`` of head-frame offsets and the rotation ``[T, 3, 3]``."""
    rotation = geo.rotation_matrix(*np.rad2deg(params[:, :3]).T)
    a = geo.IMAGE_SCALE * params[:, 3, None, None] * rotation[:, :2] * np.array([1.0, -1.0])[:, None]
    return a, rotation


def _gaze_from_pupils(observed: np.ndarray, params: np.ndarray, model: geo.FaceModel) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form horizontal and vertical gaze angles ``[T]`` (radians), averaged over the two pupils."""
    a, rotation = _camera_rows(params)
    origin = 0.5 + params[:, 4:6]
    directions = []
    for eye, pupil in enumerate(geo.PUPILS):
        centre = model.eye_centres[eye]
        b = (observed[:, pupil] - origin - a @ centre) / model.eyeball_radius          # = A d
        d = np.einsum("tij,ti->tj", a, b) / (geo.IMAGE_SCALE * params[:, 3, None]) ** 2  # pseudo-inverse
        depth = np.sqrt(np.maximum(1.0 - (d ** 2).sum(-1), 0.0))
        directions.append(d + depth[:, None] * rotation[:, 2])  # the unit-norm solution facing the camera
    d = np.mean(directions, 0)
    return np.arctan2(d[:, 0], d[:, 2]), np.arcsin(np.clip(d[:, 1] / np.linalg.norm(d, axis=-1), -1, 1))


def _fit_gaze(observed: np.ndarray, params: np.ndarray, model: geo.FaceModel, iterations: int) -> np.ndarray:
    """Gaze angles ``[T, 2]`` (horizontal, vertical; degrees) fitted to the 18 iris/pupil points."""
    h, v = np.rad2deg(_gaze_from_pupils(observed, params, model))
    a, _ = _camera_rows(params)
    t = len(observed)
    centres = 0.5 + params[:, None, 4:6] + np.einsum("tij,kj->tki", a, np.repeat(model.eye_centres, 9, 0))
    target = (observed[:, geo.EYEBALL] - centres).reshape(t, -1)  # image offsets of the 18 points from their centres
    dirs = model.iris_directions.reshape(18, 3) * model.eyeball_radius
    for _ in range(iterations):
        rotations = np.concatenate([geo.gaze_rotation(h, v)[:, None], geo.gaze_rotation_jacobian(h, v)], 1)
        image = np.einsum("tij,tmjl,kl->tmki", a, rotations, dirs)  # [T, 3, 18, 2]: value, d/dh, d/dv
        residual = target - image[:, 0].reshape(t, -1)
        jac = np.moveaxis(image[:, 1:], 1, -1).reshape(t, -1, 2)
        step = np.linalg.solve(np.einsum("tki,tkj->tij", jac, jac) + 1e-15 * np.eye(2),
                               np.einsum("tki,tk->ti", jac, residual)[..., None])[..., 0]
        h, v = h + np.rad2deg(step[:, 0]), v + np.rad2deg(step[:, 1])
        if np.abs(step).max() < 1e-10:
            break
    return np.stack([h, v], -1)


def gaze_channels(horizontal: np.ndarray, vertical: np.ndarray) -> np.ndarray:
    """``[T, 4]`` canonical gaze channels (left, right, up, down) for angles in degrees; inverse of gaze_angles."""
    h, v = np.asarray(horizontal) / schema.GAZE_DEGREES, np.asarray(vertical) / schema.GAZE_DEGREES
    return np.clip(np.stack([h, -h, v, -v], -1), 0.0, 1.0)


# --------------------------------------------------------------------------------------------------- main
def read_state(keypoints: np.ndarray, identity: Identity, iterations: int = 10) -> np.ndarray:
    """``float32 [T, 24]`` states recovered from keypoints ``[T, 99, 2]`` (or ``[24]`` from ``[99, 2]``).

    Exact inverse of ``geometry.keypoints(identity, state)`` for states inside ``schema.RANGES`` (gaze up to
    30 degrees, |pitch| < 90), in the canonical gaze form; least squares on noisy keypoints, with the AU and
    mouth channels held to their ranges during the fit and pose/translation clipped to theirs afterwards, so the
    result is always a valid state. ``iterations`` caps the Gauss-Newton steps (it stops earlier once the steps
    are below 1e-9).
    """
    observed, single = _as_keypoint_frames(keypoints)
    if not len(observed):
        return np.zeros((0, schema.NUM_CHANNELS), np.float32)
    model = geo.face_model(identity)
    params = _fit_expression_and_pose(observed, model, iterations)
    gaze = _fit_gaze(observed, params, model, iterations)
    state = np.zeros((len(observed), schema.NUM_CHANNELS))
    state[:, geo.LINEAR_STATE_INDEX] = params[:, _RIGID:]
    state[:, schema.GAZE_SLICE] = gaze_channels(gaze[:, 0], gaze[:, 1])
    state[:, schema.POSE_SLICE] = np.rad2deg(params[:, :3])
    state[:, schema.TRANSLATION_SLICE] = np.concatenate([params[:, 4:6], params[:, 3:4] - 1.0], -1)
    out = schema.clip_to_range(state)
    return out[0] if single else out
