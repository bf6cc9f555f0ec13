"""Loss-only adaptivity: term weights from loss values, residual-based adaptive resampling, the
residual's L_p norm, and point sets that grow when they are overfitted.

All four use nothing but forward queries of the loss, so they work with every optimizer
(first order, zeroth order, Gauss-Newton); all act only when the training points are
resampled (``PINNTask.sample``), so that between resamples every optimizer sees one fixed
problem (the points and the weights of its terms). docs/method.md, "Loss-only adaptivity".

Term weights (``loss_weights``): the loss is sum_i w_i lambda_i L_i with L_i the mean squared
residual of term i (the interior residual, then each condition) and w_i its configured weight;
the lambda_i come from the term values w_i L_i alone:

- ``relobralo`` (Bischof & Kraus 2021, relative loss balancing with random lookback),
  ``relobralo_weights``;
- ``softadapt`` (Heydari et al. 2019, normalised slopes), ``softadapt_weights``;
- ``discrepancy`` (Morozov's discrepancy principle, for data conditions with a stated ``noise``):
  a data term's lambda shrinks while its RMS misfit is below the noise, so that the network does
  not bend towards the noise, and grows back to 1 while it is above; ``discrepancy_weights``.

Resampling (``resample: rad``; Wu et al. 2023): the interior points are B of a uniform pool of
``rad_pool`` x B candidates, drawn with replacement with probability
p(x) proportional to |r(x)|^k / mean |r|^k + c (``rad_probabilities``).

The residual's norm (``residual_power`` p in [1, 2]; ``lp_weights``): the interior points get the
weights |r|^(p - 2) (mean 1) of iteratively reweighted least squares, so that the interior term
follows the L_p norm of the equation's residual rather than its mean square. The reweighting starts
from a least-squares fit: the first ``residual_power_warmup`` point sets keep weight 1.

Growth (``grow_points``, ``max_growth``; ``PointGrowth``): the sets of every later resample double
when the loss on fresh points exceeds ``grow_points`` times the loss on the points just fitted and
fell by less than half since the last resample.

Cost, in loss queries (counted by the objective): one per weight update (the terms at the
current parameters on the new points), ``rad_pool`` per RAD resample (the pool's residuals,
evaluated in chunks of B points), one per L_p reweighting and two per growth check.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from pinnzo.errors import PinnzoError
from pinnzo.residual import Batch

TINY = 1e-300  # guards a division by a term that is exactly zero


# ---------------------------------------------------------------- term weights

def _balance(ratios: torch.Tensor, tau: float) -> torch.Tensor:
    """m softmax(ratios / tau) (m,): weights that average to 1."""
    return len(ratios) * torch.softmax(ratios / tau, dim=0)


def relobralo_weights(losses: torch.Tensor, previous: torch.Tensor, first: torch.Tensor, weights: torch.Tensor,
                      alpha: float, tau: float, lookback: bool) -> torch.Tensor:
    """ReLoBRaLo's lambda(t) (m,) from the term losses L(t), L(t-1), L(0) (m,) and lambda(t-1) (m,).

        bal(t, t')  = m softmax_i( L_i(t) / (tau L_i(t')) )
        hist        = rho lambda(t-1) + (1 - rho) bal(t, 0)      rho ~ Bernoulli (``lookback``)
        lambda(t)   = alpha hist + (1 - alpha) bal(t, t-1)
    """
    rho = 1.0 if lookback else 0.0
    history = rho * weights + (1 - rho) * _balance(losses / first.clamp_min(TINY), tau)
    return alpha * history + (1 - alpha) * _balance(losses / previous.clamp_min(TINY), tau)


def softadapt_weights(losses: torch.Tensor, previous: torch.Tensor, beta: float) -> torch.Tensor:
    """SoftAdapt's lambda(t) (m,) from L(t) and L(t-1) (m,): the normalised slopes
    n_i = s_i / sum_j |s_j|, s_i = L_i(t) - L_i(t-1), through m softmax(beta n)."""
    slopes = losses - previous
    return _balance(slopes / slopes.abs().sum().clamp_min(TINY), 1 / beta)


def discrepancy_weights(mean_squares: torch.Tensor, noise: torch.Tensor, weights: torch.Tensor,
                        floor: float) -> torch.Tensor:
    """The discrepancy principle's lambda(t) (m,) from the terms' mean squared residuals (m,), the
    noise standard deviations s (m,; 0 where a term states none) and lambda(t-1) (m,):

        lambda_i(t) = clamp(lambda_i(t-1) mean(r_i^2) / s_i^2, floor, 1)   where s_i > 0,   1 elsewhere.

    At its fixed point the data's RMS misfit equals their noise, as the discrepancy principle asks
    of a regularised fit to noisy data; a term fitted more closely than its noise is weighted down."""
    stated = noise > 0
    ratio = mean_squares / noise.clamp_min(TINY).square()
    return torch.where(stated, (weights * ratio).clamp(floor, 1.0), torch.ones_like(weights))


@dataclasses.dataclass
class Discrepancy:
    """The discrepancy principle's lambda (m,) over the terms (``loss_weights: discrepancy``);
    lambda = 1 to start with. ``noise`` (m,): each term's noise standard deviation, 0 where none."""

    noise: torch.Tensor
    floor: float = 0.01
    weights: torch.Tensor | None = None

    def update(self, mean_squares: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        previous = self.weights if self.weights is not None else torch.ones_like(self.noise)
        self.weights = discrepancy_weights(mean_squares.detach().double().cpu(), self.noise, previous, self.floor)
        return self.weights

    def state_dict(self) -> dict:
        return {"weights": self.weights}

    def load_state_dict(self, saved: dict) -> None:
        self.weights = saved["weights"]


@dataclasses.dataclass
class TermBalancer:
    """The adaptive weights lambda (m,) and the loss history they need; lambda = 1 at the first update."""

    rule: str
    alpha: float = 0.999
    tau: float = 0.1
    rho: float = 0.99
    beta: float = 0.1
    first: torch.Tensor | None = None  # L(0)
    previous: torch.Tensor | None = None  # L(t-1)
    weights: torch.Tensor | None = None  # lambda(t-1)

    def update(self, losses: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """lambda(t) (m,) float64 from the term losses L(t) (m,); one Bernoulli draw (relobralo)."""
        losses = losses.detach().double().cpu()
        if self.weights is None:
            self.first, weights = losses, torch.ones_like(losses)
        elif self.rule == "relobralo":
            lookback = bool(torch.rand((), generator=generator, dtype=torch.float64) < self.rho)
            weights = relobralo_weights(losses, self.previous, self.first, self.weights, self.alpha, self.tau,
                                        lookback)
        else:
            weights = softadapt_weights(losses, self.previous, self.beta)
        self.previous, self.weights = losses, weights
        return weights

    def state_dict(self) -> dict:
        return {"first": self.first, "previous": self.previous, "weights": self.weights}

    def load_state_dict(self, saved: dict) -> None:
        self.first, self.previous, self.weights = saved["first"], saved["previous"], saved["weights"]


# ---------------------------------------------------------------- residual-based resampling

def rad_probabilities(residuals: torch.Tensor, k: float, c: float) -> torch.Tensor:
    """RAD's sampling probabilities (P,) float64 of P candidates with residuals r (P,):
    p proportional to |r|^k / mean |r|^k + c (uniform when every residual is 0)."""
    density = residuals.detach().double().abs().pow(k)
    mean = density.mean()
    density = density / mean + c if mean > 0 else torch.ones_like(density)
    return density / density.sum()


def rad_choice(residuals: torch.Tensor, count: int, k: float, c: float, generator: torch.Generator) -> torch.Tensor:
    """Indices (count,) of the kept candidates, drawn with replacement with RAD's probabilities."""
    probabilities = rad_probabilities(residuals, k, c).cpu()
    return torch.multinomial(probabilities, count, replacement=True, generator=generator)


# ---------------------------------------------------------------- the residual's norm

LP_FLOOR = 1e-3  # residuals below this x their RMS weigh as if they were this large


def lp_weights(residuals: torch.Tensor, power: float, floor: float = LP_FLOOR) -> torch.Tensor:
    """The interior points' weights w (B,) float64 of iteratively reweighted least squares for the
    L_p norm of the residuals r (B,) at which they are taken, scaled to mean 1:

        w_i = max(|r_i|, floor rms(r))^(p - 2) / mean_j max(|r_j|, floor rms(r))^(p - 2).

    Near r, the weighted term mean(w r^2) has the gradient and the Gauss-Newton model of
    c mean |r|^p (c = 2 / (p mean_j |r_j|^(p - 2)), up to the floor): large residuals, where the
    network cannot follow a singularity or a thin layer, weigh less than in the mean square, and
    the fit of the rest of the domain more. All 1 for p = 2, or where every residual is 0.
    """
    size = residuals.detach().double().abs()
    rms = size.square().mean().sqrt()
    if power == 2 or rms == 0:
        return torch.ones_like(size)
    weights = size.clamp_min(floor * rms).pow(power - 2)
    return weights / weights.mean()


# ---------------------------------------------------------------- growing point sets

class PointGrowth:
    """Point sets that double when the last one was overfitted (``grow_points``, ``max_growth``).

    At a resample, the loss at theta on the fresh points estimates the PDE's loss without bias; the
    loss on the points just fitted is optimistic (a least-squares fit of p parameters to n residuals
    by about (n + p) / (n - p), under 3 for n >= 2p). The sets of every later resample are twice as
    large, up to ``limit`` times the first (interior and condition points alike), when both

    - the fresh loss exceeds ``ratio`` times the fitted one: theta fits the points, not the PDE; and
    - the fresh loss fell by less than half since the last resample: the fit of a set no longer buys
      progress on the PDE (early on, a large gap goes with fast progress, and more points would only
      make the steps dearer).

    Cost: two loss queries a resample until the limit; docs/method.md, "Growing point sets".
    """

    def __init__(self, ratio: float, limit: int):
        self.ratio, self.limit, self.factor = ratio, limit, 1
        self.last_fresh = math.inf  # the fresh loss at the last resample

    def can_grow(self) -> bool:
        return self.ratio > 0 and 2 * self.factor <= self.limit

    def overfitted(self, fitted: float, fresh: float) -> bool:
        """Whether the loss ``fresh`` on new points exceeds ``ratio`` times ``fitted`` on the last ones
        while it fell by less than half since the last resample (which it then remembers)."""
        stalled, self.last_fresh = fresh > self.last_fresh / 2, fresh
        return stalled and fresh > self.ratio * fitted

    def state_dict(self) -> dict:
        return {"factor": self.factor, "limit": self.limit, "last_fresh": self.last_fresh}

    def load_state_dict(self, saved: dict) -> None:
        self.factor, self.limit = saved.get("factor", 1), saved.get("limit", self.limit)
        self.last_fresh = saved.get("last_fresh", math.inf)


# ---------------------------------------------------------------- the hook of the PINN task

class Adaptivity:
    """What ``PINNTask.sample`` applies to a freshly drawn batch: RAD's interior points, the
    interior points' weights of the L_p norm (``residual_power``), then the term weights.
    ``generator`` (the run's seeded "adaptive" generator) draws the pool, the selection and the
    lookback. ``resample_every``: the steps of a point set (the run's, with its automatic default)."""

    def __init__(self, settings, loss, objective, resample_every: int):
        self.settings, self.loss, self.objective = settings, loss, objective
        self.warmup_steps = settings.residual_power_warmup * resample_every  # the L_p weights start here
        self.balancer = None
        if settings.loss_weights == "discrepancy":
            self.balancer = Discrepancy(self._noise(loss.problem), settings.discrepancy_floor)
        elif settings.loss_weights != "fixed":
            self.balancer = TermBalancer(settings.loss_weights, settings.relobralo_alpha, settings.relobralo_tau,
                                         settings.relobralo_rho, settings.softadapt_beta)

    @staticmethod
    def _noise(problem) -> torch.Tensor:
        """Each term's noise standard deviation (m,) float64: a data condition's ``noise``, else 0."""
        noise = [0.0] + [condition.data.noise or 0.0 if condition.data is not None else 0.0
                         for condition in problem.conditions]
        if not any(noise):
            raise PinnzoError("loss_weights discrepancy: no data condition states its noise (noise: the standard "
                              "deviation of its measurements); give one, or choose fixed, relobralo or softadapt")
        return torch.tensor(noise, dtype=torch.float64)

    @property
    def active(self) -> bool:
        return self.balancer is not None or self.settings.resample == "rad" or self.settings.residual_power != 2

    def reweights(self, step: int) -> bool:
        """Whether the points drawn at ``step`` get L_p weights: p < 2 and the first
        ``residual_power_warmup`` point sets (of ``resample_every`` steps each) are behind. The weights
        |r|^(p - 2) of an untrained network would favour the points it happens to fit, and hide the
        features it has yet to find (a front, a layer) as if they were outliers."""
        return self.settings.residual_power != 2 and step >= self.warmup_steps

    def describe(self) -> str:
        """Empty, or the adaptivity in use, e.g. "; relobralo term weights; RAD points (pool 10 x batch)"."""
        s, text = self.settings, ""
        if self.balancer is not None:
            text += f"; {s.loss_weights} term weights"
        if s.resample == "rad":
            text += f"; RAD points (pool {s.rad_pool} x batch, k = {s.rad_k:g}, c = {s.rad_c:g})"
        if s.residual_power != 2:
            text += (f"; the residual's L{s.residual_power:g} norm (least squares reweighted from step "
                     f"{self.warmup_steps})")
        return text

    def term_names(self) -> list[str]:
        return ["residual"] + [condition.name for condition in self.loss.problem.conditions]

    def metric_fields(self) -> list[str]:
        """metrics.csv's weight columns: the effective weight w_i lambda_i of each term."""
        return [f"weight_{name}" for name in self.term_names()] if self.balancer is not None else []

    def metric_values(self, batch: Batch) -> dict:
        if self.balancer is None:
            return {}
        configured = [1.0, *self.loss.condition_weights]
        weights = batch.weights or (1.0,) * len(configured)
        return {f"weight_{name}": w * lam for name, w, lam in zip(self.term_names(), configured, weights)}

    def adapt(self, batch: Batch, theta: torch.Tensor, generator: torch.Generator, step: int) -> Batch:
        """The batch drawn at ``step`` with RAD's interior points, their L_p weights (from the end of the
        warm-up on) and the updated term weights."""
        network = self.objective.network(theta)
        if self.settings.resample == "rad":
            batch = dataclasses.replace(batch, interior=self._rad_points(network, batch.interior, generator))
        if self.reweights(step):
            self.objective.queries += 1
            with torch.no_grad():
                residual = self.loss.interior_residual(network, batch.interior)
            weights = lp_weights(residual, self.settings.residual_power).to(batch.interior.dtype)
            batch = dataclasses.replace(batch, point_weights=weights)
        if self.balancer is not None:
            self.objective.queries += 1
            with torch.no_grad():
                if isinstance(self.balancer, Discrepancy):  # the unweighted mean squares
                    residuals = self.loss.residuals(network, batch)
                    terms = {name: r.double().square().mean() for name, r in residuals.items()}
                else:
                    terms = self.loss.terms(network, batch)
            weights = self.balancer.update(torch.stack(list(terms.values())), generator)
            batch = dataclasses.replace(batch, weights=tuple(weights.tolist()))
        return batch

    def _rad_points(self, network, interior: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """B points (B, D) of a uniform pool of rad_pool x B, chosen by their residuals."""
        s, count = self.settings, len(interior)
        pool = self.loss.problem.sample_interior(s.rad_pool * count, generator, interior.dtype, interior.device)
        residuals = []
        with torch.no_grad():
            for block in torch.split(pool, count):
                self.objective.queries += 1
                residuals.append(self.loss.interior_residual(network, block))
        chosen = rad_choice(torch.cat(residuals), count, s.rad_k, s.rad_c, generator)
        return pool[chosen.to(pool.device)]

    def state_dict(self) -> dict:
        return self.balancer.state_dict() if self.balancer is not None else {}

    def load_state_dict(self, saved: dict) -> None:
        if self.balancer is not None and saved:
            self.balancer.load_state_dict(saved)


__all__ = ["Adaptivity", "Discrepancy", "PointGrowth", "TermBalancer", "discrepancy_weights", "lp_weights",
           "rad_choice", "rad_probabilities", "relobralo_weights", "softadapt_weights"]
