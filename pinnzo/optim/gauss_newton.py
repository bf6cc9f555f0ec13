"""Gauss-Newton / Levenberg-Marquardt on the residual vector: ``zo-gn`` (forward queries only) and ``gn``.

The PINN loss is a sum of squares, L(theta) = |rho(theta)|^2 (residual.py). Near a
solution a Gauss-Newton step solves the linearised least-squares problem in a
subspace spanned by directions s_1..s_k (the rows of S, (k, d); all d coordinates
when S is the identity):

    J_S = d rho / d(S^T a)  (n, k),   (J_S^T J_S + lambda D) a = -J_S^T rho,   theta <- theta + S^T a,

with D = mean(diag(J_S^T J_S)) I (Levenberg's, the default) or diag(J_S^T J_S) (Marquardt's scaling,
``damping_matrix=diagonal``). ``zo-gn`` forms J_S by forward
differences of residual-vector queries, rho(theta + mu s_j) - rho(theta) over mu, so
it needs nothing but forward evaluations (along coordinates, by default, with the network's
values moved by mu times their chain-rule derivative at the moved layer: ``linear``,
optim/coordinates.py); ``gn`` takes the Jacobian by autograd.

The step is accepted or rejected on a fresh query of the same points: the gain
ratio rho_g = (L - L_new) / (L - |rho + J_S a|^2) compares the actual with the
predicted decrease. Nielsen's rule (K. Madsen, H. B. Nielsen, O. Tingleff,
"Methods for non-linear least squares problems", 2004) adapts lambda from it:
accepted: lambda *= max(1/3, 1 - (2 rho_g - 1)^3), nu = 2; rejected: lambda *= nu,
nu *= 2. Marquardt's rule divides or multiplies lambda by 10. A rejected step is
retried with the larger damping (one query each, up to ``max_tries``), so a singular
or ill-conditioned J^T J is handled by the damping, never by an exception. A run has
converged when the loss falls below ``tolerance`` times its first value (Madsen et al.'s
test F(x) <= eps_3 for zero-residual problems, made relative to the loss's scale), or when
no trial step decreases the loss even at the largest damping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from pinnzo.errors import PinnzoError
from pinnzo.optim.objective import Objective
from pinnzo.optim.info import StepInfo

SUBSPACES = ("auto", "coordinates", "gaussian", "orthonormal")
MIN_DAMPING, MAX_DAMPING = 1e-15, 1e15
STALL_GAIN = 0.9  # a stall after one goes on with fresh points only below this fraction of that one's loss
AUTO_COORDINATES = 4096  # "auto": all coordinates up to this many parameters, else random directions


class Jacobian(NamedTuple):
    """rho at theta (n,), J_S (n, k), the directions S (k, d) or None (all coordinates), queries used."""

    residual: torch.Tensor
    matrix: torch.Tensor
    directions: torch.Tensor | None
    queries: int


class GNState(NamedTuple):
    damping: float  # lambda
    growth: float  # Nielsen's nu
    accepted: int  # steps accepted so far
    rejected: int  # trial steps rejected so far
    first_loss: float = math.nan  # the loss at the first step (the tolerance is relative to it)
    since_stall: int = 0  # steps accepted since the last stall (the points' last refresh after one)
    stall_loss: float = math.inf  # the loss at the last stall


def default_mu(theta: torch.Tensor, gain: float = 1.0, difference: str = "forward") -> float:
    """sqrt(eps * gain) times the scale of theta: the forward-difference step that balances truncation
    against rounding, when the residuals carry rounding errors of eps * gain (relative; ``gain`` is the
    derivative backend's amplification, 1 for exact derivatives); (eps * gain)^(1/3) for central
    differences, whose truncation is of second order."""
    power = 1 / 3 if difference == "central" else 1 / 2
    return (torch.finfo(theta.dtype).eps * gain) ** power * max(1.0, theta.abs().max().item())


def auto_subspace(count: int, dim: int, residuals: int) -> tuple[str, int]:
    """What ``auto`` means for d parameters and n residuals: all coordinates up to 4,096 parameters,
    else min(count, n) orthonormal directions (J has rank at most n)."""
    if dim <= AUTO_COORDINATES:
        return "coordinates", dim
    return "orthonormal", min(count, residuals, dim)


def subspace(kind: str, count: int, dim: int, generator: torch.Generator, like: torch.Tensor,
             residuals: int | None = None) -> torch.Tensor | None:
    """The directions S (k, d) of a step: None for all coordinates; unit-norm Gaussian directions;
    or k orthonormal ones (the Q of a Gaussian matrix). ``auto`` (see auto_subspace) needs the number
    of residuals n."""
    if kind == "auto":
        kind, count = auto_subspace(count, dim, dim if residuals is None else residuals)
    if kind == "coordinates":
        return None
    count = min(count, dim)
    gaussian = torch.randn(dim, count, generator=generator, dtype=torch.float64)
    if kind == "gaussian":
        S = (gaussian / gaussian.norm(dim=0)).T
    elif kind == "orthonormal":
        S = torch.linalg.qr(gaussian).Q.T
    else:
        raise ValueError(f"unknown subspace {kind!r}; must be one of {', '.join(SUBSPACES)}")
    return S.to(dtype=like.dtype, device=like.device)


def difference_jacobian(objective: Objective, theta: torch.Tensor, batch, generator: torch.Generator,
                        kind: str = "auto", count: int = 200, mu: float = 0.0, difference: str = "forward",
                        gain: float = 1.0, linear: bool = False) -> Jacobian:
    """J_S by differences of residual-vector queries: forward (k + 1 queries) or central (2k + 1).

    Coordinate columns take the layered path when the objective has one (the same values, re-running
    only the layers after each perturbed parameter; central differences move by -mu too; ``linear``:
    the network's values move by mu times their derivative instead, LayeredForward.sensitivities,
    one layered change per unit, not per parameter). There the
    residuals' changes round relative to the stencil's parts, not to the solution values amplified
    by the stencil (Objective.coordinate_rounding_gain, one more query), so mu is sized by that gain
    in place of the backend's ``gain``: far smaller, and the columns' truncation with it.
    """
    S = subspace(kind, count, theta.numel(), generator, theta, objective.residual_count(batch))
    k = theta.numel() if S is None else len(S)
    if S is None and difference in ("forward", "central") and objective.layered:
        layered_gain = None if mu else objective.coordinate_rounding_gain(theta, batch)
        # never above the backend's own gain: the layered changes round at most like black-box ones
        # (a gain beyond it means solution values u far below the stencil's parts; u = 0 makes it infinite)
        mu = mu or default_mu(theta, gain if layered_gain is None else min(layered_gain, gain), difference)
        extra = 0 if layered_gain is None else 1
        r0 = objective.residuals(theta[None], batch)[0]
        chosen = torch.arange(k, device=theta.device)
        plus = objective.coordinate_residuals(theta, batch, chosen, mu, linear)
        if difference == "forward":
            # the differences from the layered path's own unperturbed residuals (a move by 0): r0 by
            # batched forwards may differ in its last bits, which the stencil amplifies and 1 / mu more
            base = objective.coordinate_residuals(theta, batch, chosen[:1], 0.0)[0]
            return Jacobian(r0, ((plus - base) / mu).T, None, k + 2 + extra)
        minus = objective.coordinate_residuals(theta, batch, chosen, -mu, linear)
        return Jacobian(r0, ((plus - minus) / (2 * mu)).T, None, 2 * k + 1 + extra)
    mu = mu or default_mu(theta, gain, difference)
    steps = mu * (torch.eye(k, dtype=theta.dtype, device=theta.device) if S is None else S)
    if difference == "forward":
        values = objective.residuals(torch.cat([theta[None], theta + steps]), batch)
        return Jacobian(values[0], ((values[1:] - values[0]) / mu).T, S, k + 1)
    if difference == "central":
        values = objective.residuals(torch.cat([theta[None], theta + steps, theta - steps]), batch)
        return Jacobian(values[0], ((values[1:k + 1] - values[k + 1:]) / (2 * mu)).T, S, 2 * k + 1)
    raise ValueError(f"unknown difference {difference!r}; must be one of forward, central")


@dataclass(frozen=True)
class GaussNewton:
    """Levenberg-Marquardt steps; the Jacobian by ``autograd`` or by forward ``differences`` in a
    subspace (``kind``: auto | coordinates | gaussian | orthonormal, ``count`` random directions)."""

    stage: str  # "gn" (autograd) | "zo-gn" (differences)
    kind: str = "auto"
    count: int = 200
    mu: float = 0.0
    difference: str = "forward"
    damping: float = 1e-3
    rule: str = "nielsen"
    matrix: str = "identity"  # D: identity (Levenberg, scaled by the mean of diag(J^T J)) | diagonal (Marquardt)
    tolerance: float = 1e-10  # converged once the loss is below this times its first value (0: never)
    acceleration: float = 0.0  # geodesic acceleration kept while |w| <= this x |v| (0: off)
    max_tries: int = 8
    memory_mb: int = 1024
    rounding_gain: float = 1.0  # the derivative backend's amplification of rounding (sizes mu)
    floor: float = MIN_DAMPING  # lambda never falls below this
    linear: bool = True  # layered columns by the chain rule from the units' derivatives (LayeredForward.sensitivities)
    reuse: int = 2  # more steps with an accepted step's Jacobian, each while it lowers the loss (_reused)

    def schedule(self, step: int) -> float:
        return 1.0  # a (damped) Newton step: no learning rate

    def init(self, theta: torch.Tensor) -> GNState:
        return GNState(self.damping, 2.0, 0, 0)

    def jacobian(self, objective: Objective, theta: torch.Tensor, batch, generator) -> Jacobian:
        self._check_memory(objective, theta, batch)
        if self.stage == "gn":
            residual, matrix = objective.residual_jacobian(theta, batch, self._columns(objective, theta, batch))
            return Jacobian(residual, matrix, None, 1)
        return difference_jacobian(objective, theta, batch, generator, self.kind, self.count, self.mu,
                                   self.difference, self.rounding_gain, self.linear)

    def update(self, step: int, theta, state: GNState, objective: Objective, batch, generator):
        jacobian = self.jacobian(objective, theta, batch, generator)
        r0, J = jacobian.residual.double(), jacobian.matrix.double()
        J, held = _finite_columns(J)
        A, g, loss = _normal_equations(objective, batch, J, r0)
        if not math.isfinite(loss):
            return theta, state, StepInfo(loss, self.stage)
        scale = damping_scale(A.diagonal(), self.matrix)
        damping, growth, rejected = state.damping, state.growth, state.rejected
        first = loss if math.isnan(state.first_loss) else state.first_loss
        for _ in range(self.max_tries):
            M = A + damping * torch.diag(scale)
            solve = _solver(M)
            a = solve(-g)
            if self.acceleration:
                a = self._accelerated(objective, batch, theta, jacobian, J, r0, solve, a)
            candidate = theta + self._move(jacobian, a)
            r1 = objective.residuals(candidate[None], batch)[0].double()
            new_loss = _squared_norm(objective, batch, r1)
            predicted = -(2 * (a @ g) + a @ (A @ a)).item()
            gain = (loss - new_loss) / predicted if predicted > 0 else -1.0
            if math.isfinite(new_loss) and gain > 0:
                damping, growth = self._accepted(damping, gain), 2.0
                candidate, new_loss = self._reused(objective, batch, jacobian, J, solve, candidate, r1, new_loss)
                info = self._accepted_info(loss, new_loss, first)
                info.events.extend(_held_event(self.stage, held))
                return candidate, GNState(damping, growth, state.accepted + 1, rejected, first,
                                          state.since_stall + 1, state.stall_loss), info
            damping, growth, rejected = self._rejected(damping, growth), growth * 2, rejected + 1
        if damping < MAX_DAMPING:
            return theta, state._replace(damping=damping, growth=growth, rejected=rejected, first_loss=first), \
                StepInfo(loss, self.stage)
        return theta, *self._stalled(state, loss, rejected, first)

    def _stalled(self, state: GNState, loss: float, rejected: int, first: float) -> tuple[GNState, StepInfo]:
        """No trial step decreased the loss, and at the largest damping the steps vanish. A minimum of
        these points' least squares need not be one of the PDE's: after progress since the last stall
        to a loss at least ``STALL_GAIN`` below that stall's, ask for fresh points and start their
        damping afresh; else stop (converged: at a rounding floor, fresh points only add noise)."""
        if state.since_stall == 0 or loss > STALL_GAIN * state.stall_loss:
            info = StepInfo(loss, self.stage, converged=True)
            info.events.append(f"{self.stage}: converged (no decrease of the loss {loss:.3e} at damping "
                               f"{MAX_DAMPING:.0e}, and no gain since the last stall at "
                               f"{state.stall_loss:.3e}): stopping")
            return GNState(MAX_DAMPING, 2.0, state.accepted, rejected, first, 0, loss), info
        info = StepInfo(loss, self.stage, stalled=True)
        info.events.append(f"{self.stage}: no decrease of the loss {loss:.3e} at damping {MAX_DAMPING:.0e} on "
                           f"these points: fresh points, damping {self.damping:g}")
        return GNState(self.damping, 2.0, state.accepted, rejected, first, 0, loss), info

    def _reused(self, objective, batch, jacobian, J, solve, theta, residual, loss):
        """Up to ``reuse`` more steps from an accepted one with the same Jacobian and factorisation
        (the modified Levenberg-Marquardt step of J. Fan, Math. Comp. 81 (2012) 447-466):

            a' = -(J^T J + lambda D)^-1 J^T rho(theta'),   theta' <- theta' + a',

        one residual query each, no new Jacobian (a Shamanskii or chord iteration; its cost is
        J^T rho and two triangular solves). Each is kept only if it lowers the loss again; the first
        that does not ends them. Returns the last kept theta and its loss."""
        for _ in range(self.reuse):
            pull = objective.sum_rows(batch, lambda rows: J[rows].T @ residual[rows])
            trial = theta + self._move(jacobian, solve(-pull))
            moved = objective.residuals(trial[None], batch)[0].double()
            trial_loss = _squared_norm(objective, batch, moved)
            if not trial_loss < loss:  # (NaN included)
                break
            theta, residual, loss = trial, moved, trial_loss
        return theta, loss

    def _move(self, jacobian: Jacobian, a: torch.Tensor) -> torch.Tensor:
        """The change of theta (d,) for the subspace coefficients a (k,)."""
        move = a if jacobian.directions is None else a @ jacobian.directions.double()
        return move.to(jacobian.residual.dtype)

    def _accelerated(self, objective, batch, theta, jacobian, J, r0, solve, velocity):
        """The step with geodesic acceleration (Transtrum and Sethna, 2012): the second directional
        derivative of rho along the velocity v, rho_vv ~ (2/h) ((rho(theta + h v) - rho) / h - J v)
        with h = 0.1 (one query), gives the acceleration w = -M^-1 J^T rho_vv and the step v + w / 2,
        which follows the curved valley of the residuals instead of its tangent (``solve``: b -> M^-1 b).
        Kept when |w| <= acceleration x |v| (else the plain step v)."""
        h = 0.1
        moved = objective.residuals((theta + self._move(jacobian, h * velocity))[None], batch)[0].double()
        curvature = 2 / h * ((moved - r0) / h - J @ velocity)
        pull = objective.sum_rows(batch, lambda rows: J[rows].T @ curvature[rows])
        acceleration = solve(-pull)
        if not bool(torch.isfinite(acceleration).all()) or acceleration.norm() > self.acceleration * velocity.norm():
            return velocity
        return velocity + acceleration / 2

    def _accepted_info(self, loss: float, new_loss: float, first: float) -> StepInfo:
        """The step's record; converged once the new loss is below ``tolerance`` times the first loss
        (a zero-residual problem solved to that relative accuracy)."""
        info = StepInfo(loss, self.stage, converged=new_loss <= self.tolerance * first)
        if info.converged:
            info.events.append(f"{self.stage}: converged (the loss {new_loss:.3e} is below {self.tolerance:g} "
                               f"times its first value {first:.3e}): stopping")
        return info

    def _accepted(self, damping: float, gain: float) -> float:
        if self.rule == "marquardt":
            return max(damping / 10, self.floor)
        return max(damping * max(1 / 3, 1 - (2 * gain - 1) ** 3), self.floor)

    def _rejected(self, damping: float, growth: float) -> float:
        return min(damping * (10 if self.rule == "marquardt" else growth), MAX_DAMPING)

    def fits(self, objective: Objective, theta: torch.Tensor, batch) -> bool:
        """Whether the Jacobian of ``batch`` fits in memory_mb whole (for gn: the network's Jacobian at
        the stencil rows in one block; PINNTask grows its points only then)."""
        jacobian, network = self._memory(objective, theta, batch)
        return jacobian.megabytes + network.megabytes <= self.memory_mb

    def _check_memory(self, objective: Objective, theta: torch.Tensor, batch) -> None:
        """Refuse a Jacobian (n x k values, with its float64 copy) that would not fit in memory_mb, for
        gn with the network's Jacobian at the stencil rows one parameter at a time (_columns)."""
        jacobian, network = self._memory(objective, theta, batch)
        needed = jacobian.megabytes + network.megabytes / max(1, network.columns)
        if needed > self.memory_mb:
            subspace = "" if self.stage == "gn" else ", use gn_subspace=orthonormal with fewer gn_directions"
            what = jacobian.what + (f" and the network's {network.what}, one parameter at a time"
                                    if network.columns else "")
            raise PinnzoError(f"{self.stage}: {what} (~{needed:,.0f} MB), more than memory_mb = {self.memory_mb}: "
                              f"lower batch or condition_batch{subspace}, or raise memory_mb")

    def _columns(self, objective: Objective, theta: torch.Tensor, batch) -> int | None:
        """For gn with a stencil backend, the network parameters whose Jacobian at the stencil rows fits
        in what memory_mb leaves beside the residuals' Jacobian (None: all of them; fewer cost one more
        pass of the network's gradients per block, Objective._layered_residual_jacobian)."""
        jacobian, network = self._memory(objective, theta, batch)
        if not network.columns or jacobian.megabytes + network.megabytes <= self.memory_mb:
            return None
        per_column = network.megabytes / network.columns
        return max(1, int((self.memory_mb - jacobian.megabytes) / per_column))

    def _memory(self, objective: Objective, theta: torch.Tensor, batch) -> tuple["Memory", "Memory"]:
        """The megabytes of the Jacobian of ``batch`` (n x k values, with its float64 copy) and, for gn
        with a stencil backend, of the network's Jacobian at every stencil row (R x d values, with a
        copy; ``columns``: its d network parameters, 0 when there is none)."""
        n, d = objective.residual_count(batch), theta.numel()
        if self.stage == "gn" or self.kind == "coordinates":
            k = d
        elif self.kind == "auto":
            k = auto_subspace(self.count, d, n)[1]
        else:
            k = min(self.count, d)
        jacobian = Memory(2 * 8 * n * k / 2**20, f"the Jacobian has {n:,} residuals x {k:,} directions", 0)
        if not (self.stage == "gn" and objective.layered):
            return jacobian, Memory(0.0, "", 0)
        rows, columns = len(objective.loss_fn.inputs(batch)), d - objective.unknowns
        return jacobian, Memory(2 * 8 * rows * columns / 2**20, f"{rows:,} stencil rows x {columns:,} parameters",
                                columns)


class Memory(NamedTuple):
    """The megabytes a Jacobian needs, what it holds, and its columns (parameters) when they may be
    taken a block at a time (0: all at once)."""

    megabytes: float
    what: str
    columns: int


def _finite_columns(J: torch.Tensor) -> tuple[torch.Tensor, int]:
    """J (n, k) with its columns that hold a NaN or an infinity set to zero (their directions are
    held this step, and the damping keeps the system regular), and how many there were."""
    finite = torch.isfinite(J).all(dim=0)
    held = len(finite) - int(finite.sum())
    return (J if held == 0 else torch.where(finite, J, 0.0)), held


def _held_event(stage: str, held: int) -> list[str]:
    return [f"{stage}: {held} Jacobian column(s) were not finite; their directions were held this step"] if held \
        else []


def _normal_equations(objective: Objective, batch, J: torch.Tensor, r: torch.Tensor):
    """(J^T J (k, k), J^T r (k,), |r|^2) summed over the residual rows in fixed blocks, so that a
    run whose points are split over processes (each holding its rows) gets the same numbers."""
    k = J.shape[1]

    def partial(rows):  # written into one new vector, without a copy of the (k, k) block
        block, residual = J[rows], r[rows]
        sums = J.new_empty(k * k + k + 1)
        torch.mm(block.T, block, out=sums[:k * k].view(k, k))
        torch.mv(block.T, residual, out=sums[k * k:-1])
        sums[-1] = residual @ residual
        return sums

    total = objective.sum_rows(batch, partial)
    return total[:k * k].reshape(k, k), total[k * k:-1], total[-1].item()


def damping_scale(diagonal: torch.Tensor, matrix: str) -> torch.Tensor:
    """The diagonal of D (k,) from diag(A) (k,): ``diagonal``: diag(A) (Marquardt), floored so that a
    direction the residuals ignore is still damped; ``identity``: the mean of diag(A) everywhere
    (Levenberg, made invariant to the scale of the residuals)."""
    if matrix == "identity":
        return diagonal.mean().clamp_min(1e-300).expand(len(diagonal))
    floor = 1e-12 * diagonal.max().clamp_min(1e-300)
    return diagonal.clamp_min(floor)


def _solver(M: torch.Tensor):
    """b -> M^-1 b for a symmetric positive (semi)definite M (k, k), factorised once: Cholesky,
    else least squares."""
    factor, info = torch.linalg.cholesky_ex(M)
    if info.item() == 0:
        return lambda b: torch.cholesky_solve(b[:, None], factor)[:, 0]
    return lambda b: torch.linalg.lstsq(M, b[:, None]).solution[:, 0]


def _squared_norm(objective: Objective, batch, residual: torch.Tensor) -> float:
    """|rho|^2 of a residual vector (the loss), summed over its rows like J^T J."""
    return objective.sum_rows(batch, lambda rows: residual[rows] @ residual[rows]).item()
