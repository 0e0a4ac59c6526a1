"""Optimisers shared by the registration modules.

- :func:`levenberg_marquardt`: batched damped Gauss-Newton for ``B`` independent
  least-squares problems ``min_x 0.5 * ||r(x)||^2`` with an autograd Jacobian.
- :func:`adam_loop` / :func:`sgd_loop`: a first-order loop with early stopping on a plateau
  that keeps the best parameters seen (useful for differentiable-rendering registration).
- :func:`epnp_ransac`: robust 3D-2D pose from point correspondences with OpenCV's EPnP
  inside RANSAC plus Levenberg-Marquardt refinement on the inliers.

The loops take ``progress`` / ``cancel`` (see :mod:`.progress`) and raise
:class:`~SurgicalReg2D3DLib.errors.CancelledError` when cancelled. They run on the device of
their inputs and never modify them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Union

import numpy as np
import torch

from .errors import InputError
from .progress import CancelLike, ProgressCallback, check_cancel, report

__all__ = [
    "LMResult",
    "LoopResult",
    "PnPResult",
    "levenberg_marquardt",
    "jacobian_forward",
    "adam_loop",
    "sgd_loop",
    "epnp_ransac",
]


# --------------------------------------------------------------------------------------
# Levenberg-Marquardt
# --------------------------------------------------------------------------------------


@dataclass
class LMResult:
    """Result of :func:`levenberg_marquardt` for ``B`` problems with ``P`` parameters.

    Attributes:
        x: ``(B, P)`` best parameters (the last accepted step of each item).
        cost: ``(B,)`` final ``0.5 * ||r(x)||^2`` (same definition as scipy's ``cost``).
        iterations: number of iterations run (the same for the whole batch).
        history: ``(iterations + 1, B)`` cost after each iteration, row 0 = at ``x0``;
            non-increasing per item because only improving steps are accepted.
        converged: ``(B,)`` bool, True where a tolerance was met.
        reason: one string per item saying why it stopped.
    """

    x: torch.Tensor
    cost: torch.Tensor
    iterations: int
    history: torch.Tensor
    converged: torch.Tensor
    reason: List[str]


def _check_positive(value, name: str, low: float = 0.0, high: float = math.inf) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a number, got {value!r}") from None
    if not (low < v < high) or not math.isfinite(v):
        raise InputError(f"{name}: must be in ({low:g}, {high:g}), got {value!r}")
    return v


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name}: must be an integer >= {minimum}, got {value!r}")
    return int(value)


def jacobian_forward(residual_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Jacobian ``(B, R, P)`` of a batched residual ``(B, P) -> (B, R)`` by forward-mode AD.

    Because the ``B`` problems are independent, pushing the tangent ``e_p`` (the p-th unit
    vector, the same for every item) through the function gives column ``p`` of every
    item's Jacobian at once: ``P`` Jacobian-vector products in total, whatever ``R``.
    This is the cheap direction when ``R >> P`` (many residuals, 6 pose parameters),
    where reverse mode would need ``R`` backward passes.

    The ``P`` products run vectorised with ``torch.func.vmap(torch.func.jvp)``. Functions
    that ``vmap``/forward-mode AD cannot trace (in-place ops on captured tensors, ``.item()``,
    custom autograd functions without a forward derivative) fall back to a loop over the
    ``P`` columns with ``torch.autograd.functional.jvp`` (the double-backward trick, which
    works for any function reverse-mode autograd supports, at about twice the cost).

    Not every operator has a forward derivative: ``grid_sample`` (DRRs, volume slicing)
    has none, so such residuals use ``jacobian="finite"`` or their own callable (FluoroReg
    renders the 6 perturbed poses in one batch).

    Note: torch initialises forward-mode AD lazily; the first call in a process takes a few
    seconds (one-time), later calls take milliseconds.
    """
    B, P = x.shape
    basis = torch.eye(P, dtype=x.dtype, device=x.device)[:, None, :].expand(P, B, P).contiguous()

    def column(v: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(residual_fn, (x,), (v,))[1]

    try:
        cols = torch.func.vmap(column)(basis)  # (P, B, R)
    except Exception:  # noqa: BLE001 - any tracing failure: use the generic path
        with torch.enable_grad():
            cols = torch.stack(
                [torch.autograd.functional.jvp(residual_fn, x, basis[p])[1].detach() for p in range(P)]
            )
    return cols.permute(1, 2, 0).detach()


def _jacobian_finite(residual_fn, x: torch.Tensor) -> torch.Tensor:
    """Central-difference Jacobian ``(B, R, P)`` (``2 P`` batched residual evaluations)."""
    B, P = x.shape
    step = torch.finfo(x.dtype).eps ** (1.0 / 3.0) * (1.0 + x.abs())
    cols = []
    with torch.no_grad():
        for p in range(P):
            dx = torch.zeros_like(x)
            dx[:, p] = step[:, p]
            cols.append((residual_fn(x + dx) - residual_fn(x - dx)) / (2.0 * step[:, p:p + 1]))
    return torch.stack(cols, dim=-1)


def _residual(residual_fn, x: torch.Tensor, B: int) -> torch.Tensor:
    with torch.no_grad():
        r = residual_fn(x)
    if not isinstance(r, torch.Tensor) or r.dim() != 2 or r.shape[0] != B:
        shape = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
        raise InputError(f"residual_fn: must return a tensor of shape (B, R) with B = {B}, got {shape}")
    return r.detach()


def levenberg_marquardt(
    residual_fn: Callable[[torch.Tensor], torch.Tensor],
    x0,
    max_iter: int = 50,
    lambda_init: float = 1e-3,
    lambda_up: float = 10.0,
    lambda_down: float = 0.1,
    tol_step: float = 1e-8,
    tol_cost: float = 1e-10,
    jacobian: Union[str, Callable[[torch.Tensor], torch.Tensor]] = "autograd",
    progress: Optional[ProgressCallback] = None,
    cancel: CancelLike = None,
    callback: Optional[Callable[[int, torch.Tensor, torch.Tensor], Optional[bool]]] = None,
    lambda_max: float = 1e12,
) -> LMResult:
    """Minimise ``0.5 * ||residual_fn(x)[b]||^2`` for each of ``B`` independent problems.

    Each iteration solves, per item, the Marquardt-scaled normal equations
    ``(J^T J + lambda * diag(J^T J)) dx = -J^T r``, tries ``x + dx`` and accepts it only if
    the cost decreases (then ``lambda *= lambda_down``); otherwise the step is rejected and
    ``lambda *= lambda_up``. Every item has its own ``lambda`` and stops on its own:

    - ``||dx|| <= tol_step * (||x|| + tol_step)`` (step too small),
    - an accepted step lowered the cost by less than ``tol_cost * cost`` (or cost == 0),
    - ``lambda`` exceeded ``lambda_max`` (no decrease possible: a local minimum or a
      non-smooth cost), not counted as converged.

    Items that stopped are frozen while the others go on; ``residual_fn`` is still called
    on the whole batch (problems are independent, so frozen items do not change).

    Typical use: ``x`` is an se(3) increment ``(omega, v)`` composed by the caller with an
    initial pose, ``residual_fn(x) = project(se3_exp(x) @ T0, points) - observed``.

    Args:
        residual_fn: maps ``(B, P)`` to residuals ``(B, R)``; must not mix batch items.
        x0: ``(B, P)`` initial parameters (tensor or numpy; numpy becomes float64).
        max_iter: maximum number of iterations (Jacobian evaluations).
        lambda_init, lambda_up, lambda_down: damping start value and factors.
        tol_step, tol_cost: stopping tolerances (see above); raised to 4 machine epsilons
            of ``x0``'s dtype if smaller (so float32 problems can converge).
        jacobian: ``"autograd"`` (forward-mode AD, see :func:`jacobian_forward`),
            ``"finite"`` (central differences, for non-differentiable residuals) or a
            callable ``x -> J`` of shape ``(B, R, P)``.
        progress, cancel: see :mod:`.progress`.
        callback: ``callback(iteration, x, cost)`` after each iteration; returning True
            stops the loop (items keep their current state, reason "stopped by callback").
        lambda_max: damping above which an item gives up.

    Returns:
        :class:`LMResult`.
    """
    if not callable(residual_fn):
        raise InputError("residual_fn: must be callable")
    if isinstance(x0, np.ndarray):
        x0 = torch.from_numpy(np.asarray(x0, dtype=np.float64))
    if not isinstance(x0, torch.Tensor):
        raise InputError(f"x0: expected a tensor or numpy array of shape (B, P), got {type(x0).__name__}")
    if x0.dim() != 2 or x0.shape[0] == 0 or x0.shape[1] == 0:
        raise InputError(f"x0: expected shape (B, P), got {tuple(x0.shape)}")
    if not x0.is_floating_point():
        x0 = x0.to(torch.get_default_dtype())
    if not bool(torch.isfinite(x0).all()):
        raise InputError("x0: contains NaN or infinite values")
    max_iter = _check_int(max_iter, "max_iter", 0)
    lam0 = _check_positive(lambda_init, "lambda_init")
    up = _check_positive(lambda_up, "lambda_up", 1.0)
    down = _check_positive(lambda_down, "lambda_down", 0.0, 1.0)
    tol_step = float(tol_step)
    tol_cost = float(tol_cost)
    if tol_step < 0 or tol_cost < 0:
        raise InputError(f"tol_step/tol_cost: must be >= 0, got {tol_step!r}, {tol_cost!r}")
    if isinstance(jacobian, str):
        if jacobian == "autograd":
            jac_fn = lambda x: jacobian_forward(residual_fn, x)  # noqa: E731
        elif jacobian == "finite":
            jac_fn = lambda x: _jacobian_finite(residual_fn, x)  # noqa: E731
        else:
            raise InputError(f"jacobian: must be 'autograd', 'finite' or a callable, got {jacobian!r}")
    elif callable(jacobian):
        jac_fn = jacobian
    else:
        raise InputError(f"jacobian: must be 'autograd', 'finite' or a callable, got {jacobian!r}")

    B, P = x0.shape
    x = x0.detach().clone()
    # Tolerances below the working precision could never be met (e.g. float32 inputs).
    resolution = 4.0 * torch.finfo(x.dtype).eps
    tol_step = max(tol_step, resolution)
    tol_cost = max(tol_cost, resolution)
    r = _residual(residual_fn, x, B)
    if not bool(torch.isfinite(r).all()):
        raise InputError("residual_fn: returned NaN or infinite values at x0")
    cost = 0.5 * (r * r).sum(dim=1)
    lam = torch.full((B,), lam0, dtype=x.dtype, device=x.device)
    active = torch.ones(B, dtype=torch.bool, device=x.device)
    converged = torch.zeros(B, dtype=torch.bool, device=x.device)
    reasons: List[str] = ["max_iter reached"] * B
    history = [cost.clone()]
    eye = torch.eye(P, dtype=x.dtype, device=x.device)

    def finish(mask: torch.Tensor, why: str, is_converged: bool) -> None:
        idx = torch.nonzero(mask & active).flatten().tolist()
        for i in idx:
            reasons[i] = why
        if is_converged:
            converged[mask & active] = True
        active[mask] = False

    finish(cost == 0, "zero cost", True)
    iterations = 0
    for it in range(max_iter):
        if not bool(active.any()):
            break
        check_cancel(cancel, "Levenberg-Marquardt")
        J = jac_fn(x)
        if J.shape != (B, r.shape[1], P):
            raise InputError(f"jacobian: expected shape {(B, r.shape[1], P)}, got {tuple(J.shape)}")
        J = J.to(x.dtype)
        JtJ = J.transpose(1, 2) @ J  # (B, P, P)
        g = (J.transpose(1, 2) @ r[..., None])[..., 0]  # (B, P)
        diag = torch.diagonal(JtJ, dim1=1, dim2=2)
        # Marquardt scaling; floor the diagonal so parameters the residual ignores stay solvable.
        floor = 1e-12 * diag.amax(dim=1, keepdim=True).clamp_min(1e-30)
        scale = torch.maximum(diag, floor)
        A = JtJ + (lam[:, None] * scale)[:, :, None] * eye
        dx, info = torch.linalg.solve_ex(A, -g[..., None])
        dx = dx[..., 0]
        solved = (info == 0) & torch.isfinite(dx).all(dim=1)
        dx = torch.where(solved[:, None] & active[:, None], dx, torch.zeros_like(dx))
        x_try = x + dx
        r_try = _residual(residual_fn, x_try, B)
        cost_try = 0.5 * (r_try * r_try).sum(dim=1)
        better = active & solved & torch.isfinite(cost_try) & (cost_try < cost)
        worse = active & ~better
        # Stopping tests use the proposed step (before accepting it).
        small_step = active & solved & (dx.norm(dim=1) <= tol_step * (x.norm(dim=1) + tol_step))
        decrease = cost - cost_try
        small_decrease = better & (decrease <= tol_cost * cost)

        x = torch.where(better[:, None], x_try, x)
        r = torch.where(better[:, None], r_try, r)
        cost = torch.where(better, cost_try, cost)
        lam = torch.where(better, lam * down, lam)
        lam = torch.where(worse, lam * up, lam)
        iterations = it + 1
        history.append(cost.clone())
        finish(small_decrease | (better & (cost == 0)), "cost decrease below tol_cost", True)
        finish(small_step, "step below tol_step", True)
        finish(lam > lambda_max, "damping exceeded lambda_max (no further decrease)", False)
        report(progress, iterations / max(1, max_iter),
               f"Levenberg-Marquardt iteration {iterations}: mean cost {float(cost.mean()):.4g}")
        if callback is not None and callback(iterations, x.clone(), cost.clone()):
            finish(torch.ones_like(active), "stopped by callback", False)
            break
    report(progress, 1.0, "Levenberg-Marquardt done")
    return LMResult(
        x=x,
        cost=cost,
        iterations=iterations,
        history=torch.stack(history),
        converged=converged,
        reason=reasons,
    )


# --------------------------------------------------------------------------------------
# First-order loops
# --------------------------------------------------------------------------------------


@dataclass
class LoopResult:
    """Result of :func:`adam_loop` / :func:`sgd_loop`.

    Attributes:
        best_params: detached copies of the parameters at the lowest loss (same structure
            as the ``params`` argument: one tensor or a list). With a batched loss each
            item's rows come from that item's best iteration.
        best_loss: lowest loss, scalar tensor or ``(B,)``.
        history: loss per iteration, ``(iterations,)`` or ``(iterations, B)``.
        iterations: number of gradient steps taken.
        stopped_early: True if the plateau rule (or a non-finite loss) stopped the loop.
        reason: why the loop stopped.
    """

    best_params: Union[torch.Tensor, List[torch.Tensor]]
    best_loss: torch.Tensor
    history: torch.Tensor
    iterations: int
    stopped_early: bool
    reason: str = ""


_OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


def adam_loop(
    loss_fn: Callable,
    params,
    lr: float = 1e-2,
    max_iter: int = 500,
    patience: int = 50,
    min_delta: float = 0.0,
    scheduler: Optional[Callable[[torch.optim.Optimizer], object]] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: CancelLike = None,
    optimizer: str = "adam",
    optimizer_kwargs: Optional[dict] = None,
    callback: Optional[Callable[[int, object, torch.Tensor], Optional[bool]]] = None,
) -> LoopResult:
    """Gradient-descent loop with early stopping that keeps the best parameters.

    The loop works on copies of ``params`` (the inputs are not modified): each iteration
    calls ``loss = loss_fn(p)`` with the working copies ``p`` (a tensor if ``params`` is a
    tensor, else a list), back-propagates and takes one optimiser step.

    Batched losses: if ``loss_fn`` returns ``(B,)``, every parameter tensor must have ``B``
    rows (leading dimension); items are optimised together (``loss.sum()`` is
    back-propagated, which keeps them independent for Adam/SGD) but the best parameters and
    the plateau counter are tracked per item.

    Early stopping: an item "improves" when its loss drops below ``best - min_delta``;
    the loop stops when no item improved for ``patience`` iterations. A non-finite loss
    stops the loop (keeping the best parameters so far); at the first iteration it raises.

    Args:
        loss_fn: ``loss_fn(p) -> scalar or (B,) tensor``, differentiable in ``p``.
        params: a tensor or a sequence of tensors (initial values).
        lr: learning rate.
        max_iter: maximum number of steps.
        patience: plateau length (iterations) that stops the loop.
        min_delta: minimum decrease counted as an improvement.
        scheduler: ``scheduler(optimizer) -> torch.optim.lr_scheduler`` object, stepped after
            each iteration (``ReduceLROnPlateau`` receives the total loss).
        optimizer: ``"adam"`` (default), ``"adamw"`` or ``"sgd"``.
        optimizer_kwargs: extra keyword arguments of the optimiser (e.g. ``momentum``).
        callback: ``callback(iteration, p, loss)``; returning True stops the loop.

    Returns:
        :class:`LoopResult`.
    """
    if not callable(loss_fn):
        raise InputError("loss_fn: must be callable")
    single = isinstance(params, torch.Tensor)
    if single:
        plist = [params]
    elif isinstance(params, (list, tuple)) and params and all(isinstance(p, torch.Tensor) for p in params):
        plist = list(params)
    else:
        raise InputError("params: expected a tensor or a non-empty sequence of tensors")
    for i, p in enumerate(plist):
        if not p.is_floating_point():
            raise InputError(f"params: tensor {i} must be floating point, got {p.dtype}")
        if not bool(torch.isfinite(p).all()):
            raise InputError(f"params: tensor {i} contains NaN or infinite values")
    lr = _check_positive(lr, "lr")
    max_iter = _check_int(max_iter, "max_iter", 1)
    patience = _check_int(patience, "patience", 1)
    if not math.isfinite(float(min_delta)) or float(min_delta) < 0:
        raise InputError(f"min_delta: must be >= 0, got {min_delta!r}")
    if optimizer not in _OPTIMIZERS:
        raise InputError(f"optimizer: must be one of {sorted(_OPTIMIZERS)}, got {optimizer!r}")

    work = [p.detach().clone().requires_grad_(True) for p in plist]
    opt = _OPTIMIZERS[optimizer](work, lr=lr, **(optimizer_kwargs or {}))
    sched = scheduler(opt) if scheduler is not None else None
    arg = work[0] if single else work

    best_params = [p.detach().clone() for p in work]
    best_loss: Optional[torch.Tensor] = None
    since_best: Optional[torch.Tensor] = None
    history = []
    stopped_early, reason = False, "max_iter reached"
    iterations = 0
    for it in range(max_iter):
        check_cancel(cancel, "optimisation loop")
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(arg)
        if not isinstance(loss, torch.Tensor) or loss.dim() > 1:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise InputError(f"loss_fn: must return a scalar or (B,) tensor, got {shape}")
        value = loss.detach()
        if best_loss is None:
            if loss.dim() == 1:
                for i, p in enumerate(work):
                    if p.dim() == 0 or p.shape[0] != loss.shape[0]:
                        raise InputError(
                            f"params: tensor {i} must have {loss.shape[0]} rows (one per loss item), "
                            f"got shape {tuple(p.shape)}"
                        )
            if not bool(torch.isfinite(value).all()):
                raise InputError("loss_fn: returned NaN or infinite loss at the initial parameters")
            best_loss = torch.full_like(value, math.inf)
            since_best = torch.zeros_like(value, dtype=torch.long)
        if not bool(torch.isfinite(value).all()):
            stopped_early, reason = True, f"non-finite loss at iteration {it}"
            break
        history.append(value.clone())
        improved = value < best_loss - min_delta
        better = value < best_loss
        if bool(better.any()):
            for b, p in zip(best_params, work):
                if value.dim() == 0:
                    b.copy_(p.detach())
                else:
                    sel = better.view((-1,) + (1,) * (p.dim() - 1))
                    b.copy_(torch.where(sel, p.detach(), b))
            best_loss = torch.where(better, value, best_loss)
        since_best = torch.where(improved, torch.zeros_like(since_best), since_best + 1)
        if bool((since_best >= patience).all()):
            stopped_early, reason = True, f"no improvement for {patience} iterations"
            break
        if callback is not None and callback(it + 1, arg, value):
            reason = "stopped by callback"
            break
        loss.sum().backward()
        opt.step()
        iterations = it + 1
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(float(value.sum()))
            else:
                sched.step()
        report(progress, iterations / max_iter, f"iteration {iterations}: loss {float(value.sum()):.4g}")
    report(progress, 1.0, "optimisation done")
    return LoopResult(
        best_params=best_params[0] if single else best_params,
        best_loss=best_loss,
        history=torch.stack(history) if history else torch.empty(0),
        iterations=iterations,
        stopped_early=stopped_early,
        reason=reason,
    )


def sgd_loop(loss_fn: Callable, params, lr: float = 1e-2, momentum: float = 0.9, **kwargs) -> LoopResult:
    """:func:`adam_loop` with ``torch.optim.SGD`` (``momentum`` as given)."""
    extra = dict(kwargs.pop("optimizer_kwargs", None) or {})
    extra.setdefault("momentum", momentum)
    return adam_loop(loss_fn, params, lr=lr, optimizer="sgd", optimizer_kwargs=extra, **kwargs)


# --------------------------------------------------------------------------------------
# EPnP + RANSAC
# --------------------------------------------------------------------------------------


@dataclass
class PnPResult:
    """Result of :func:`epnp_ransac` (numpy, float64).

    Attributes:
        model_to_camera: ``(4, 4)`` pose mapping model points to the OpenCV camera frame.
        inliers: ``(K,)`` indices of the correspondences RANSAC kept.
        reprojection_error_px: mean reprojection error of the inliers (pixels) at the
            final pose.
        errors_px: ``(N,)`` reprojection error of every correspondence at the final pose.
    """

    model_to_camera: np.ndarray
    inliers: np.ndarray
    reprojection_error_px: float
    errors_px: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _to_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a numeric array, got {type(x).__name__}") from None


def epnp_ransac(
    points_3d,
    points_2d,
    K,
    dist=None,
    reprojection_px: float = 8.0,
    confidence: float = 0.99,
    iterations: int = 1000,
    min_inliers: int = 6,
    refine: bool = True,
) -> PnPResult:
    """Pose of a model from 3D-2D correspondences: EPnP in RANSAC, then LM on the inliers.

    Calls ``cv2.solvePnPRansac(..., flags=cv2.SOLVEPNP_EPNP)`` and, if ``refine``,
    ``cv2.solvePnPRefineLM`` on the inliers (minimises their reprojection error).

    Args:
        points_3d: ``(N, 3)`` model points (mm, model frame).
        points_2d: ``(N, 2)`` observed pixels ``(u = column, v = row)``.
        K: ``(3, 3)`` camera matrix (OpenCV camera frame: x right, y down, z forward).
        dist: OpenCV distortion coefficients (4, 5, 8, 12 or 14 values) or None.
        reprojection_px: RANSAC inlier threshold in pixels.
        confidence: RANSAC confidence in (0, 1).
        iterations: maximum RANSAC iterations.
        min_inliers: fewest inliers accepted as a solution (>= 4).
        refine: run the LM refinement on the inliers.

    Returns:
        :class:`PnPResult`.

    Raises:
        InputError: bad shapes, fewer than 4 points, NaN, no pose with ``min_inliers``, or
            inliers too degenerate for a finite pose (too few distinct 3D points).
    """
    import cv2

    p3 = _to_numpy(points_3d, "points_3d")
    p2 = _to_numpy(points_2d, "points_2d")
    k = _to_numpy(K, "K")
    if p3.ndim != 2 or p3.shape[1] != 3:
        raise InputError(f"points_3d: expected shape (N, 3), got {p3.shape}")
    if p2.ndim != 2 or p2.shape[1] != 2:
        raise InputError(f"points_2d: expected shape (N, 2), got {p2.shape}")
    if p3.shape[0] != p2.shape[0]:
        raise InputError(
            f"points_2d: expected as many points as points_3d ({p3.shape[0]}), got {p2.shape[0]}"
        )
    if p3.shape[0] < 4:
        raise InputError(f"points_3d: need at least 4 correspondences, got {p3.shape[0]}")
    if not np.isfinite(p3).all():
        raise InputError("points_3d: contains NaN or infinite values")
    if not np.isfinite(p2).all():
        raise InputError("points_2d: contains NaN or infinite values")
    if k.shape != (3, 3) or not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise InputError(f"K: expected a finite 3x3 camera matrix with fx, fy > 0, got shape {k.shape}")
    if dist is not None:
        d = _to_numpy(dist, "dist").ravel()
        if d.size not in (4, 5, 8, 12, 14) or not np.isfinite(d).all():
            raise InputError(f"dist: expected 4, 5, 8, 12 or 14 finite coefficients, got {d.size}")
    else:
        d = np.zeros(5)
    reprojection_px = _check_positive(reprojection_px, "reprojection_px")
    confidence = _check_positive(confidence, "confidence", 0.0, 1.0)
    iterations = _check_int(iterations, "iterations", 1)
    min_inliers = _check_int(min_inliers, "min_inliers", 4)
    n = p3.shape[0]
    if n < min_inliers:
        raise InputError(f"points_3d: need at least min_inliers = {min_inliers} correspondences, got {n}")

    ok, rvec, tvec, inliers = cv2.solvePnPRansac(
        p3, p2, k, d,
        iterationsCount=iterations,
        reprojectionError=reprojection_px,
        confidence=confidence,
        flags=cv2.SOLVEPNP_EPNP,
    )
    n_in = 0 if inliers is None else len(inliers)
    if not ok or inliers is None or n_in < min_inliers:
        raise InputError(
            f"points_2d: RANSAC found no pose with at least {min_inliers} inliers within "
            f"{reprojection_px:g} px (best: {n_in} of {n} correspondences); check the "
            f"correspondences, the camera matrix K and reprojection_px"
        )
    inliers = np.asarray(inliers, dtype=np.int64).ravel()
    # OpenCV reports success when the inliers pair many pixels with the same 3 or fewer
    # model points, with a NaN pose or one kilometres away: no pose is defined by them
    distinct = len(np.unique(p3[inliers], axis=0))
    if distinct < 4:
        raise InputError(
            f"points_3d: RANSAC's {n_in} inliers hold {distinct} distinct 3D points; at "
            f"least 4 are needed for a pose; check the correspondences"
        )
    if refine:
        rvec, tvec = cv2.solvePnPRefineLM(p3[inliers], p2[inliers], k, d, rvec.copy(), tvec.copy())
    if not (np.isfinite(rvec).all() and np.isfinite(tvec).all()):
        raise InputError(
            f"points_3d: no finite pose from RANSAC's {n_in} inliers ({distinct} distinct 3D "
            f"points; degenerate, e.g. on one line); check the correspondences"
        )
    R, _ = cv2.Rodrigues(rvec)
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(tvec, dtype=np.float64).ravel()
    proj, _ = cv2.projectPoints(p3, rvec, tvec, k, d)
    errors = np.linalg.norm(proj.reshape(-1, 2) - p2, axis=1)
    return PnPResult(
        model_to_camera=T,
        inliers=inliers,
        reprojection_error_px=float(errors[inliers].mean()),
        errors_px=errors,
    )
