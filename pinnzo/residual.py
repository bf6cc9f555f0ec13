"""Problem x backend -> the PINN loss on a batch of points (paper eqs. 4-6).

    L = mean_i r(x_i)^2 + sum_c weight_c * mean_k (B_c[u](x_k) - g_c(x_k))^2

The builder reads the atoms off the equation, asks the backend for exactly
those, and evaluates the compiled residual on them. The same terms form the
residual vector of the least-squares view (Gauss-Newton),

    rho = [r(x_i) / sqrt(B), sqrt(weight_c / B_c) (B_c[u](x_k) - g_c(x_k))],   |rho|^2 = L.

With a stencil backend (fd, stein, sparse-grid) the loss is a fixed function of
the network's values at fixed points: ``inputs(batch)`` lists those points and
``criterion(outputs, batch)`` finishes the loss from the values, so the layered
coordinate queries can supply them (optim/coordinates.py).

An inverse problem's unknowns enter the equation and the conditions: the network
callable carries their raw coordinates (``network.unknowns`` (k,), see
optim/objective.py), which the loss maps to values (unknowns.py); a callable
without them (a plain function) stands for the unknowns at their initial values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from pinnzo.atoms import VALUE, assemble
from pinnzo.derivatives.base import DerivativeBackend, StencilBackend
from pinnzo.problem import Problem
from pinnzo.unknowns import unknown_values

Network = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Batch:
    """Training points of one step.

    interior: (B, D) points in the domain.
    conditions: per condition of the problem, (X (Bc, D), outward normals (Bc, d) or None).
    weights: adaptive factors lambda of the terms (interior first, then each condition), which
        multiply their configured weights; None: all 1 (adaptive.py, ``loss_weights``).
    point_weights: (B,) weights of the interior points' squared residuals, which average the
        interior term over its points (iteratively reweighted least squares for the norm
        ``residual_power``; adaptive.py); None: all 1.
    held_unknowns: the raw unknowns (k,) every term takes in place of the parameters' own (a forward
        finish, ``forward_finish``: the unknowns held at their estimates); None: the parameters'.
    """

    interior: torch.Tensor
    conditions: tuple[tuple[torch.Tensor, torch.Tensor | None], ...]
    counts: tuple[int, ...] | None = None  # points per term in the whole step, when this is a rank's shard
    weights: tuple[float, ...] | None = None  # adaptive factors of the terms' weights (adaptive.py)
    point_weights: torch.Tensor | None = None  # the interior points' weights (adaptive.py, residual_power)
    starts: tuple[int, ...] | None = None  # each term's first point in the whole step's (a shard or part; None: 0)
    held_unknowns: torch.Tensor | None = None  # the raw unknowns (k,) of a forward finish, else None

    @property
    def sizes(self) -> tuple[int, ...]:
        """Points of every term in the whole step (interior, then each condition)."""
        return self.counts or (len(self.interior), *(len(X) for X, _ in self.conditions))

    def shard(self, world) -> "Batch":
        """This rank's share of every term's points (``world.shard``; distributed.py), remembering
        the whole step's count of each term's points."""
        return self._take(world.shard)

    def part(self, index: int, parts: int) -> "Batch":
        """Contiguous part ``index`` of ``parts`` of every term's points (sizes differing by at most
        one, as ``World.shard`` takes them), remembering the whole step's count of each term's points
        (its residuals are then those rows of the whole step's residual vector)."""
        return self._take(lambda count: slice(count * index // parts, count * (index + 1) // parts))

    def _take(self, take) -> "Batch":
        """The points ``take(count)`` (a slice) of every term of ``count`` points, with the step's counts
        and where the points taken start in the step's (a measured condition's data follow them)."""
        terms = [self.interior] + [X for X, _ in self.conditions]
        slices = [take(len(X)) for X in terms]
        starts = tuple(start + part.start for start, part in zip(self.starts or (0,) * len(terms), slices))
        conditions = tuple((X[part], None if n is None else n[part])
                           for (X, n), part in zip(self.conditions, slices[1:]))
        return Batch(self.interior[slices[0]], conditions, self.sizes, self.weights,
                     None if self.point_weights is None else self.point_weights[slices[0]], starts,
                     self.held_unknowns)

    def join(self, other: "Batch", fixed: tuple[bool, ...] = ()) -> "Batch":
        """This batch's points of every term followed by ``other``'s (whole batches, no weights of
        terms or points); the conditions marked ``fixed`` (data, whose points are the file's) keep
        this batch's points alone."""
        fixed = fixed or (False,) * len(self.conditions)
        conditions = tuple((X, n) if keep else (torch.cat([X, Y]), None if n is None else torch.cat([n, m]))
                           for (X, n), (Y, m), keep in zip(self.conditions, other.conditions, fixed))
        return Batch(torch.cat([self.interior, other.interior]), conditions)


def sample_batch(problem: Problem, interior: int, per_condition: int, generator: torch.Generator,
                 dtype=torch.float32, device="cpu") -> Batch:
    """Fresh uniform points for one step, from the seeded ``generator``."""
    X = problem.sample_interior(interior, generator, dtype, device)
    conditions = tuple(problem.sample_condition(c, per_condition, generator, dtype, device)
                       for c in problem.conditions)
    return Batch(X, conditions)


class PINNLoss:
    """loss(network, batch) for one problem and derivative backend."""

    def __init__(self, problem: Problem, backend: DerivativeBackend, condition_scale: float = 1.0):
        """``condition_scale`` multiplies the weight of every condition but measured data (pinn.condition_scale)."""
        self.problem, self.backend, self.condition_scale = problem, backend, condition_scale
        self.condition_weights = tuple(c.weight * (1.0 if c.kind == "measured" else condition_scale)
                                       for c in problem.conditions)  # the loss's weight of each condition
        self.condition_atoms = [problem.condition_atoms(c) for c in problem.conditions]
        self.atoms = problem.atoms.union(*self.condition_atoms)  # every atom of every term
        self._inputs_of, self._inputs = None, None  # the stencil points of the last batch
        self._affine_of, self._affine = None, None  # the ansatz's (a, b) at them, when affine in N
        self._fixed_of, self._fixed = None, None  # the terms' values of the points alone (_fixed_values)
        self._offsets: list[tuple[torch.Tensor, frozenset, dict]] = []  # the ansatz offset's parts at recent points

    def _residuals(self, atoms_at, batch: Batch, raw: torch.Tensor | None = None
                   ) -> list[tuple[str, torch.Tensor, float | torch.Tensor, int | None]]:
        """(name, residual (..., B_k), weight (a number, or (B_k,) per point), count) of every term;
        ``atoms_at(k, X, atoms)`` gives the atoms at the points of term k (0: interior, c + 1:
        condition c); ``raw``: the unknowns' raw coordinates (k,) (None: their initial values), replaced
        by the batch's ``held_unknowns`` when it holds them; count: the term's points in the whole step
        when ``batch`` is a shard (its mean is then the ranks' summed sum / count), else None."""
        problem = self.problem
        raw = batch.held_unknowns if batch.held_unknowns is not None else raw
        unknowns = unknown_values(problem.unknowns, raw) if raw is not None else None
        counts = batch.counts or (None,) * (1 + len(problem.conditions))
        starts = batch.starts or (0,) * (1 + len(problem.conditions))
        fixed = self._fixed_values(batch)
        interior_weight = 1.0 if batch.point_weights is None else batch.point_weights
        terms = [("residual", problem.residual_from_atoms(batch.interior, atoms_at(0, batch.interior, problem.atoms),
                                                          unknowns, fixed[0]), interior_weight, counts[0])]
        for k, (condition, (X, normals)) in enumerate(zip(problem.conditions, batch.conditions), 1):
            values = atoms_at(k, X, self.condition_atoms[k - 1])
            target = problem.measurements(condition, X, starts[k]) if condition.kind == "measured" else fixed[k]
            terms.append((condition.name, problem.condition_residual(condition, X, normals, values, unknowns, target),
                          self.condition_weights[k - 1], counts[k]))
        if batch.weights is not None:
            terms = [(name, residual, weight * factor, count)
                     for (name, residual, weight, count), factor in zip(terms, batch.weights)]
        return terms

    def _fixed_values(self, batch: Batch) -> list[torch.Tensor | None]:
        """What the terms take from the points alone, computed once per batch: the equation's forcing
        at the interior points, then each condition's target (None where there is none, or where the
        points carry a graph: their values are then computed with it, each time)."""
        if self._fixed_of is batch:
            return self._fixed
        points = [batch.interior] + [X for X, _ in batch.conditions]
        if any(X.requires_grad for X in points):
            return [None] * len(points)
        problem = self.problem
        self._fixed = [problem.forcing(batch.interior)] + [
            problem.condition_target(condition, X) for condition, (X, _) in zip(problem.conditions, batch.conditions)]
        self._fixed_of = batch
        return self._fixed

    def _backend_atoms(self, network: Network):
        spatial = self.problem.spatial
        if not self.splits_ansatz:
            u = self.problem.solution(network)
            return lambda k, X, atoms: self.backend(u, X, atoms, spatial)
        varying = lambda X: self.problem.ansatz_coefficients(X)[1] * network(X)  # noqa: E731  b N
        return lambda k, X, atoms: assemble(atoms, self._parts(self.backend.values(varying, X, atoms, spatial),
                                                               X, atoms), spatial)

    @property
    def splits_ansatz(self) -> bool:
        """Whether an affine ansatz u = a + b N enters the finite differences as b N alone, with the
        exact derivatives of its offset a added to their parts (Problem.ansatz_offset_parts). The
        differences then round relative to |b N|, not to |u|: on hjb20 (u = sum(x) + (1 - t) N,
        |u| ~ 10) the residual's rounding falls about 13x. Not for the Stein backends, whose atoms
        are those of a Gaussian smoothing, a's included."""
        return self.layered and not self.backend.smoothed and self.problem.affine_ansatz

    def _parts(self, F: torch.Tensor, X: torch.Tensor, atoms: frozenset) -> dict:
        """The elementary atoms {atom: (..., B)} from stencil values F (..., B, S) at the points X (B, D):
        of u, or with ``splits_ansatz`` of b N plus the exact ones of the ansatz's offset a."""
        parts = self.backend.parts(F, atoms, self.problem.spatial)
        if not self.splits_ansatz:
            return parts
        offsets = self._offset_parts(X, frozenset(parts))
        return {key: value + offsets[key] for key, value in parts.items()}

    def _offset_parts(self, X: torch.Tensor, keys: frozenset) -> dict:
        """Problem.ansatz_offset_parts at X, kept for the last few point sets (the same points are
        queried many times; points that carry a graph are computed each time)."""
        for points, known, parts in self._offsets:
            if points is X and known == keys:
                return parts
        parts = self.problem.ansatz_offset_parts(X, keys)
        if not X.requires_grad:
            self._offsets = [(X, keys, parts)] + self._offsets[:7]
        return parts

    def residuals(self, network: Network, batch: Batch) -> dict[str, torch.Tensor]:
        """Each term's residuals: {"residual": (B,), <condition name>: (B_c,)} (unweighted)."""
        return {name: residual for name, residual, _, _ in self._residuals(self._backend_atoms(network), batch,
                                                                            _raw(network))}

    def terms(self, network: Network, batch: Batch) -> dict[str, torch.Tensor]:
        """Each term of the loss: {"residual": scalar, <condition name>: scalar}."""
        return {name: _term(residual, weight, count) for name, residual, weight, count
                in self._residuals(self._backend_atoms(network), batch, _raw(network))}

    def __call__(self, network: Network, batch: Batch) -> torch.Tensor:
        """The scalar loss."""
        return sum(self.terms(network, batch).values())

    def residual_vector(self, network: Network, batch: Batch) -> torch.Tensor:
        """rho (n,), n = B + sum_c B_c, with |rho|^2 = the loss."""
        return _stack(self._residuals(self._backend_atoms(network), batch, _raw(network)))

    def interior_residual(self, network: Network, X: torch.Tensor) -> torch.Tensor:
        """The equation's residual r (B,) at interior points X (B, D), unweighted (RAD's pool)."""
        problem = self.problem
        return problem.residual_from_atoms(X, self._backend_atoms(network)(0, X, problem.atoms))

    def residual_count(self, batch: Batch) -> int:
        """n: one residual per interior point and per condition point."""
        return len(batch.interior) + sum(len(X) for X, _ in batch.conditions)

    def predict(self, network: Network, X: torch.Tensor) -> torch.Tensor:
        """The backend's solution u at X (B,): smoothed for the Stein backends."""
        u = self.problem.solution(network)
        return self.backend(u, X, {VALUE}, self.problem.spatial)[VALUE]

    # ---- the layered form: the loss from the network's values at fixed points

    @property
    def layered(self) -> bool:
        """Whether the loss is criterion(network(inputs(batch)), batch) (a stencil backend)."""
        return isinstance(self.backend, StencilBackend)

    def _segments(self, batch: Batch) -> list[tuple[torch.Tensor, frozenset]]:
        X = [batch.interior] + [points for points, _ in batch.conditions]
        return list(zip(X, [frozenset(self.problem.atoms)] + self.condition_atoms))

    def inputs(self, batch: Batch) -> torch.Tensor:
        """Every point the backend evaluates the network at: (R, D), the interior's stencil,
        then each condition's (computed once per batch)."""
        if self._inputs_of is not batch:
            spatial = self.problem.spatial
            self._inputs = torch.cat([self.backend.points(X, atoms, spatial) for X, atoms in self._segments(batch)])
            self._inputs_of = batch
        return self._inputs

    def split(self, batch: Batch, rows: int) -> list[Batch]:
        """``batch`` in parts (``Batch.part``) whose stencils have at most about ``rows`` rows of
        ``inputs`` each, for work that holds many values per row (the layered coordinate queries,
        Objective._layered); whole when it fits."""
        spatial, dim = self.problem.spatial, self.problem.dim
        total = sum(len(X) * self.backend.evaluations_per_point(atoms, spatial, dim)
                    for X, atoms in self._segments(batch))
        fewest = min(len(X) for X, _ in self._segments(batch))
        parts = min(-(-total // max(1, rows)), max(1, fewest))
        if parts == 1:
            return [batch]
        return [batch.part(index, parts) for index in range(parts)]

    def join_rows(self, values: list[torch.Tensor], parts: list[Batch]) -> torch.Tensor:
        """The residual vectors (..., n) of a batch from those of its ``split`` parts (..., n_i):
        every term's rows, part after part."""
        pieces = [torch.split(value, [len(part.interior), *(len(X) for X, _ in part.conditions)], dim=-1)
                  for value, part in zip(values, parts)]
        return torch.cat([piece for term in zip(*pieces) for piece in term], dim=-1)

    def _ansatz(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The affine ansatz's (a, b) (R,) at ``inputs(batch)`` (u = a + b N), or None."""
        if self._affine_of is not batch:
            self._affine, self._affine_of = self.problem.ansatz_coefficients(self.inputs(batch)), batch
        return self._affine

    def _solution_values(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """u (..., R) from network values N (..., R) at ``inputs(batch)``."""
        affine = self._ansatz(batch)
        if affine is None:
            return self.problem.apply_ansatz(self.inputs(batch), outputs)
        return affine[0] + affine[1] * outputs

    def _stencils(self, batch: Batch) -> list[tuple[slice, int, int, frozenset]]:
        """Per segment: its rows of ``inputs(batch)``, its points B, its stencil size S, its atoms."""
        result, start = [], 0
        for X, atoms in self._segments(batch):
            stencil = len(self.backend.offsets(atoms, tuple(self.problem.spatial), X.shape[1], X.dtype, X.device))
            result.append((slice(start, start + len(X) * stencil), len(X), stencil, atoms))
            start += len(X) * stencil
        return result

    def _stencil_values(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """What the stencils combine (..., R), from network values N (..., R) at ``inputs(batch)``: u,
        or b N when the ansatz is split (``splits_ansatz``)."""
        if self.splits_ansatz:
            return self._ansatz(batch)[1] * outputs
        return self._solution_values(outputs, batch)

    def _atoms_from_outputs(self, outputs: torch.Tensor, batch: Batch):
        """atoms_at for network values (..., R) at ``inputs(batch)``."""
        values = self._stencil_values(outputs, batch)
        blocks = [values[..., rows].reshape(*values.shape[:-1], count, stencil)
                  for rows, count, stencil, _ in self._stencils(batch)]
        return lambda k, X, atoms: assemble(atoms, self._parts(blocks[k], X, atoms), self.problem.spatial)

    def criterion(self, outputs: torch.Tensor, batch: Batch, unknowns: torch.Tensor | None = None) -> torch.Tensor:
        """The loss (...,) from network values (..., R) at ``inputs(batch)`` (and the unknowns' raw
        coordinates (k,))."""
        return sum(_term(residual, weight, count) for _, residual, weight, count
                   in self._residuals(self._atoms_from_outputs(outputs, batch), batch, unknowns))

    def residual_criterion(self, outputs: torch.Tensor, batch: Batch, unknowns: torch.Tensor | None = None) -> torch.Tensor:
        """The residual vector (..., n) from network values (..., R) at ``inputs(batch)``."""
        return _stack(self._residuals(self._atoms_from_outputs(outputs, batch), batch, unknowns))


    def around(self, outputs: torch.Tensor, batch: Batch, unknowns: torch.Tensor | None = None) -> "Perturbations":
        """The loss and residual vector at network values outputs + changes, for many changes, with the
        unknowns' raw coordinates (k,) held fixed (None: their initial values)."""
        return Perturbations(self, outputs, batch, unknowns)


def _raw(network: Network) -> torch.Tensor | None:
    """The raw unknowns (k,) a network callable carries (objective.Network), or None."""
    return getattr(network, "unknowns", None)


class Perturbations:
    """The loss terms at network values N + dN (..., R) at ``inputs(batch)``, for many changes dN of
    the network values N (R,) at once (the layered coordinate queries, optim/coordinates.py).

    A stencil backend's elementary atoms are linear in u: their changes are one matmul of
    du (..., B, S) with the stencil's weights W (S, a) per segment (points and atoms of one term),

        parts(u + du) = parts(u) + du @ W,      du = b dN for an affine ansatz u = a + b N,

    and only the equation itself (gradsq, products of atoms) is evaluated per change, on
    (..., B) tensors. The values are those of criterion(N + dN) to rounding (the rounding of du
    is relative to du, not to u).
    """

    def __init__(self, loss: PINNLoss, outputs: torch.Tensor, batch: Batch, unknowns: torch.Tensor | None = None):
        self.loss, self.outputs, self.batch, self.unknowns = loss, outputs, batch, unknowns
        self.u = loss._solution_values(outputs, batch)
        values, spatial = loss._stencil_values(outputs, batch), loss.problem.spatial
        self.segments = []
        for (rows, count, stencil, atoms), (X, _) in zip(loss._stencils(batch), loss._segments(batch)):
            base = loss._parts(values[rows].reshape(count, stencil), X, atoms)
            keys, weights = loss.backend.linear_map(atoms, spatial, loss.problem.dim, outputs.dtype, outputs.device)
            self.segments.append((rows, count, stencil, atoms, base, keys, weights))

    def rounding_gain(self) -> float | None:
        """How much larger than the solution values u the rounding of N + dN's residuals is, for a
        change dN of its own: the parts at N + dN are ``base + du @ W``, so they and the residuals
        made of them carry the rounding of the unperturbed parts and residuals (eps |value|), where
        a black-box query's carry that of u amplified by the stencil's weights (the backend's
        rounding_gain). It is max(1, max |part or residual| / max |u|); None for an ansatz that is
        not affine in N, whose du = u(N + dN) - u(N) is a difference of values again."""
        if self.loss._ansatz(self.batch) is None and self.loss.problem.ansatz is not None:
            return None
        parts = [part for segment in self.segments for part in segment[4].values()]
        residuals = [residual for _, residual, _, _ in self._terms(torch.zeros_like(self.outputs))]
        largest = max(values.abs().max().item() for values in parts + residuals)
        return max(1.0, largest / max(self.u.abs().max().item(), torch.finfo(self.u.dtype).tiny))

    def _change_of_u(self, changes: torch.Tensor) -> torch.Tensor:
        affine = self.loss._ansatz(self.batch)
        if affine is not None:
            return affine[1] * changes
        if self.loss.problem.ansatz is None:
            return changes
        return self.loss._solution_values(self.outputs + changes, self.batch) - self.u

    def _terms(self, changes: torch.Tensor) -> list[tuple[str, torch.Tensor, float, int | None]]:
        du = self._change_of_u(changes)
        return self._terms_of_parts([du[..., rows].reshape(*du.shape[:-1], count, stencil) @ weights
                                     for rows, count, stencil, _, _, _, weights in self.segments])

    def _terms_of_parts(self, moved: list[torch.Tensor]) -> list[tuple[str, torch.Tensor, float, int | None]]:
        """The terms with each segment's parts moved by moved[k] (..., B_k, a_k)."""
        atoms_of = []
        for (_, _, _, atoms, base, keys, _), change in zip(self.segments, moved):
            parts = {key: base[key] + change[..., i] for i, key in enumerate(keys)}
            atoms_of.append(assemble(atoms, parts, self.loss.problem.spatial))
        return self.loss._residuals(lambda k, X, atoms: atoms_of[k], self.batch, self.unknowns)

    def sensitivities(self) -> tuple[torch.Tensor, torch.Tensor]:
        """d rho / d N at N, exactly, as (row (R,), value (R,)): network value r enters only the
        residual row[r] (of the point whose stencil it belongs to), with derivative value[r]. So

            d rho / d theta = index_add(row, value * d N / d theta),

        one pass over the (R, d) Jacobian of the network values, where pushing each of its d
        columns through the residuals costs d evaluations of them. By forward mode: one product
        for du/dN, one per part of each segment for the residuals' derivatives g (B, a) by their
        parts, then value = (g @ W^T) du/dN by the chain rule through the stencil's weights W (S, a)."""
        outputs = self.outputs
        du_dN = torch.func.jvp(self._change_of_u, (torch.zeros_like(outputs),), (torch.ones_like(outputs),))[1]
        zeros = tuple(outputs.new_zeros(count, len(keys)) for _, count, _, _, _, keys, _ in self.segments)
        stacked = lambda *moved: _stack(self._terms_of_parts(list(moved)))  # noqa: E731

        def along(k: int, i: int) -> torch.Tensor:  # d rho / d (part i of segment k), at every point
            tangents = [torch.zeros_like(z) for z in zeros]
            tangents[k][:, i] = 1
            return torch.func.jvp(stacked, zeros, tuple(tangents))[1]

        row, value, offset = torch.empty_like(outputs, dtype=torch.long), torch.empty_like(outputs), 0
        for k, (rows, count, stencil, _, _, keys, weights) in enumerate(self.segments):
            g = torch.stack([along(k, i)[offset:offset + count] for i in range(len(keys))], 1)  # (B, a)
            value[rows] = (g @ weights.T).reshape(-1) * du_dN[rows]
            row[rows] = torch.arange(offset, offset + count, device=outputs.device).repeat_interleave(stencil)
            offset += count
        return row, value

    def losses(self, changes: torch.Tensor) -> torch.Tensor:
        """The loss (...,) at N + changes (..., R)."""
        return sum(_term(residual, weight, count) for _, residual, weight, count in self._terms(changes))

    def residuals(self, changes: torch.Tensor) -> torch.Tensor:
        """The residual vector (..., n) at N + changes (..., R)."""
        return _stack(self._terms(changes))


def _term(residual: torch.Tensor, weight: float | torch.Tensor, count: int | None = None) -> torch.Tensor:
    """mean weight r^2 over the last axis (a shard's part of it, sum weight r^2 / count, given the
    whole step's ``count``); ``weight`` a number or one per point (B_k,)."""
    if isinstance(weight, torch.Tensor):
        residual, weight = residual * weight.sqrt(), 1.0
    if count is None:
        return weight * residual.square().mean(-1)
    return weight * (residual.square().sum(-1) / count)


def _stack(terms: list[tuple[str, torch.Tensor, float, int | None]]) -> torch.Tensor:
    return torch.cat([residual * (weight / (count or residual.shape[-1])) ** 0.5
                      for _, residual, weight, count in terms], dim=-1)
