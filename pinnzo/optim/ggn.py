"""Generalised Gauss-Newton: ``zo-gn`` on a loss that is a convex criterion of the network's outputs
(the MNIST cross-entropy), not a sum of squares.

L(theta) = l(F(theta)) with F the outputs (R, C) on the batch. Around theta, with J = dF / dtheta
the outputs' Jacobian (n = R C rows, d columns), the generalised Gauss-Newton model of the loss
(N. N. Schraudolph, "Fast curvature matrix-vector products for second-order gradient descent", 2002) is

    L(theta + a) ~ L + g^T a + a^T G a / 2,     g = J^T grad_F l,     G = J^T H_F J,

with H_F the criterion's Hessian in the outputs, positive semi-definite for a convex l (the mean
cross-entropy: H_b = (diag p_b - p_b p_b^T) / R, p_b = softmax(F_b), mnist.CrossEntropy.curvature).
g is the loss's gradient (the chain rule through the outputs); G drops the outputs' own curvature
and stays positive semi-definite. For the least-squares loss |rho|^2 (gauss_newton.py) the same model
is the Gauss-Newton one, with F = rho, grad_F l = 2 rho and H_F = 2 I.

J comes from the layered path (optim/coordinates.py): by forward differences of the outputs (the
unperturbed forward, and only the layers after the moved parameter), or with ``linear`` by the chain
rule at the moved layer, from the units' derivatives there: no back-propagation. The
Levenberg-Marquardt step solves (G + lambda D) a = -g by conjugate gradients, preconditioned by
the diagonal, matrix-free: G v = J^T (H_F (J v)) is two products with J (O(n d)), never the
d x d matrix (O(n d^2)). Every CG iterate from a = 0 lowers the damped model, so a step cut off
after ``iterations`` is still a descent step. Damping, the acceptance test on a fresh query
of the same batch and the damping rules are GaussNewton's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable

import torch

from pinnzo.errors import PinnzoError
from pinnzo.optim.gauss_newton import GaussNewton, GNState, damping_scale, default_mu
from pinnzo.optim.info import StepInfo
from pinnzo.optim.objective import Objective


def conjugate_gradients(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, diagonal: torch.Tensor,
                        iterations: int, tolerance: float = 1e-10) -> torch.Tensor:
    """x with M x = b for a symmetric positive definite M given by ``apply`` (v -> M v), preconditioned
    by M's ``diagonal`` (all > 0), from x = 0: at most ``iterations`` products, stopped once
    |b - M x| <= tolerance |b|."""
    x = torch.zeros_like(b)
    residual = b.clone()
    z = residual / diagonal
    direction, rz = z.clone(), residual @ z
    target = tolerance * b.norm()
    for _ in range(iterations):
        if residual.norm() <= target:
            break
        moved = apply(direction)
        curvature = direction @ moved
        if curvature <= 0:  # M is positive definite; only rounding gets here
            break
        alpha = rz / curvature
        x += alpha * direction
        residual -= alpha * moved
        z = residual / diagonal
        rz, previous = residual @ z, rz
        direction = z + (rz / previous) * direction
    return x


@dataclass(frozen=True)
class GeneralisedGaussNewton(GaussNewton):
    """Levenberg-Marquardt on the generalised Gauss-Newton model of a criterion of the outputs
    (``loss_fn.curvature``), its Jacobian by layered forward differences; ``iterations``: conjugate
    gradient products per solve."""

    iterations: int = 100

    def update(self, step: int, theta, state: GNState, objective: Objective, batch, generator):
        outputs, J = self._output_jacobian(objective, theta, batch)
        loss, gradient_F, hessian = objective.loss_fn.curvature(outputs.double(), batch)
        loss = loss.item()
        if not math.isfinite(loss):
            return theta, state, StepInfo(loss, self.stage)
        d, shape = J.shape[0], outputs.shape
        J = J.reshape(d, -1)  # (d, n), in the network's dtype (see _times)
        g = _times(J, gradient_F.reshape(-1))
        curvature = lambda v: _times(J, hessian(_times(v, J).reshape(shape)).reshape(-1))  # G v
        diagonal = objective.loss_fn.curvature_diagonal(J.reshape(d, *shape), outputs.double(), batch)
        scale = damping_scale(diagonal, self.matrix)
        damping, growth, rejected = state.damping, state.growth, state.rejected
        first = loss if math.isnan(state.first_loss) else state.first_loss
        for _ in range(self.max_tries):
            solve = lambda b, lam=damping: conjugate_gradients(lambda v: curvature(v) + lam * scale * v, b,
                                                               diagonal + lam * scale, self.iterations)
            a = solve(-g)
            candidate = theta + a.to(theta.dtype)
            new_loss = objective.loss(candidate, batch).item()
            predicted = -(a @ g + a @ curvature(a) / 2).item()
            gain = (loss - new_loss) / predicted if predicted > 0 else -1.0
            if math.isfinite(new_loss) and gain > 0:
                damping = self._accepted(damping, gain)
                candidate, new_loss = self._reused_outputs(objective, batch, J, solve, candidate, new_loss)
                return candidate, GNState(damping, 2.0, state.accepted + 1, rejected, first,
                                          state.since_stall + 1, state.stall_loss), \
                    self._accepted_info(loss, new_loss, first)
            damping, growth, rejected = self._rejected(damping, growth), growth * 2, rejected + 1
        return theta, state._replace(damping=damping, growth=growth, rejected=rejected, first_loss=first), \
            StepInfo(loss, self.stage)

    def _reused_outputs(self, objective: Objective, batch, J: torch.Tensor, solve, theta: torch.Tensor, loss: float):
        """Up to ``reuse`` more steps from an accepted one with its Jacobian, curvature and damping
        (GaussNewton._reused): a' = -(G + lambda D)^-1 J^T grad_F l(F(theta')), the outputs F(theta')
        by one forward and the step's loss by one query, each kept while it lowers the loss."""
        for _ in range(self.reuse):
            objective.queries += 1
            with torch.no_grad():
                outputs = objective.network(theta)(objective.loss_fn.inputs(batch)).double()
            gradient_F = objective.loss_fn.curvature(outputs, batch)[1]
            trial = theta + solve(-_times(J, gradient_F.reshape(-1))).to(theta.dtype)
            trial_loss = objective.loss(trial, batch).item()
            if not trial_loss < loss:  # (NaN included)
                break
            theta, loss = trial, trial_loss
        return theta, loss

    def _output_jacobian(self, objective: Objective, theta: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(F (R, C), dF/dtheta (d, R, C)) by the layered path (``linear``: the chain rule at the moved
        layer; else forward differences): d + 1 queries."""
        self._check_output_memory(objective, theta, batch)
        mu = self.mu or default_mu(theta)
        outputs, changes = objective.coordinate_outputs(theta, batch, mu, self.linear)
        return outputs, changes / mu

    def _check_output_memory(self, objective: Objective, theta: torch.Tensor, batch) -> None:
        rows, d = len(objective.loss_fn.inputs(batch)), theta.numel()
        outputs = objective.loss_fn.outputs
        needed = theta.element_size() * d * rows * outputs / 2**20  # J
        if needed > self.memory_mb:
            raise PinnzoError(f"{self.stage}: the outputs' Jacobian has {rows:,} x {outputs} outputs x {d:,} "
                              f"parameters (~{needed:,.0f} MB), more than memory_mb = {self.memory_mb}: lower "
                              f"batch, or raise memory_mb")


def _times(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in the dtype of the Jacobian J among them, returned in float64. J stays in the network's
    dtype: a float32 network's J carries the accuracy of its float32 differences (~sqrt(eps), not
    more), and a float64 copy would double the memory each product of the solve streams through
    (on MNIST, 3,962 x 20,480 values: 0.65 GB against 0.32 GB)."""
    dtype = a.dtype if a.dim() == 2 else b.dtype
    return (a.to(dtype) @ b.to(dtype)).double()


def generalised(optimizer: GaussNewton, iterations: int, floor: float) -> GeneralisedGaussNewton:
    """The same settings as ``optimizer`` (a zo-gn), for a criterion of the outputs; ``floor``: the
    least damping."""
    if optimizer.stage != "zo-gn":
        raise PinnzoError(f"{optimizer.stage}: the generalised Gauss-Newton takes its Jacobian by forward "
                          f"differences (zo-gn)")
    return GeneralisedGaussNewton(**{**{f.name: getattr(optimizer, f.name) for f in fields(optimizer)},
                                     "floor": floor}, iterations=iterations)
