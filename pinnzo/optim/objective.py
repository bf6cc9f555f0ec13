"""The training loss as a pure function of a flat parameter vector theta (d,) and a batch.

Zeroth-order optimizers only call ``loss`` and ``losses``; the N perturbed
losses of a step are one ``losses(thetas, batch)`` call, evaluated as batched
forwards (torch.func.functional_call + vmap over parameter sets), chunked so a
chunk stays within the memory budget. Every evaluation at one parameter
vector is one *query*; the objective is the one owner of the count (``queries``).

In a distributed run (distributed.py) the objective also owns the communication:
with the points split, each rank evaluates its shard of the batch and loss values
and gradients are summed over the ranks (``reduce``; residual vectors stay the
shard's rows, so Gauss-Newton sums its J^T J and J^T r); with the queries split,
each rank evaluates its share of the parameter vectors on all the points and the
values are gathered. A single process does neither.

A model with unknown parameters (unknowns.WithUnknowns: an inverse problem) puts
their raw coordinates last in theta; the network callable the loss receives
carries them (``Network.unknowns``), so every optimizer trains them with the
network. The layered coordinate queries cover the network's coordinates; the
unknowns' coordinates are ordinary (black-box) queries.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

from pinnzo.distributed import World, current, row_blocks
from pinnzo.errors import PinnzoError

LossFn = Callable[[Callable[[torch.Tensor], torch.Tensor], Any], torch.Tensor]


class Network:
    """The model with parameters ``params`` (name -> tensor) as a function of its inputs (B, D) -> (B,);
    ``unknowns``: the raw unknown parameters (k,) of a WithUnknowns model, else None."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]):
        self.model, self.params = model, params
        self.unknowns = params.get(UNKNOWNS)

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, self.params, (X,))


UNKNOWNS = "unknowns.raw"  # the parameter of unknowns.WithUnknowns holding the raw unknowns
_JACOBIAN_VALUES = 2**22  # entries of one chunk of an autograd Jacobian (32 MB in float64)


class Objective:
    """loss(theta, batch) = loss_fn(network with parameters theta, batch).

    Args:
        model: the network (its parameters define the layout of theta).
        loss_fn: (network callable (B, D) -> (B,), batch) -> scalar loss.
        queries_per_chunk: parameter vectors evaluated together in one vmap.
        layered_rows: network rows the layered coordinate queries hold at once (their points are
            taken a part at a time beyond it, ``loss_fn.split``); None: all of them.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, queries_per_chunk: int = 16, world: World | None = None,
                 layered_rows: int | None = None):
        self.model, self.loss_fn = model, loss_fn
        self.layered_rows = layered_rows
        self.world = world or current()
        self.names = [name for name, _ in model.named_parameters()]
        self.shapes = [p.shape for _, p in model.named_parameters()]
        self.sizes = [p.numel() for _, p in model.named_parameters()]
        self.queries_per_chunk = max(1, queries_per_chunk)
        self.queries = 0

    @property
    def dim(self) -> int:
        """Number of trainable parameters d."""
        return sum(self.sizes)

    def flatten(self) -> torch.Tensor:
        """The model's current parameters as theta (d,), detached."""
        return torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: part.reshape(shape) for name, part, shape
                in zip(self.names, torch.split(theta, self.sizes), self.shapes)}

    def load(self, theta: torch.Tensor) -> None:
        """Copy theta into the model's parameters."""
        with torch.no_grad():
            for parameter, value in zip(self.model.parameters(), self.unflatten(theta).values()):
                parameter.copy_(value)

    def state_dict(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's state dict with parameters theta, on the CPU."""
        self.load(theta)
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def network(self, theta: torch.Tensor) -> Network:
        """The network with parameters theta, as a function of its inputs."""
        return Network(self.model, self.unflatten(theta))

    @property
    def unknowns(self) -> int:
        """k: the number of unknown parameters (the last k coordinates of theta)."""
        return self.sizes[-1] if self.names and self.names[-1] == UNKNOWNS else 0

    def reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """A sum over the points of the step from this rank's part of it (itself unless the
        points are split over ranks)."""
        return self.world.all_reduce(tensor) if self.world.sharded else tensor

    def sum_rows(self, batch, partial: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The sum over the step's residual rows of ``partial(rows)`` (rows: local row indices),
        taken in fixed blocks added in a fixed order, so that it is bit for bit the same on any
        power-of-two number of processes (distributed.row_blocks). ``partial`` returns a new tensor
        of its own: the sums are taken into it in place."""
        world = self.world if self.world.sharded else World()
        sizes = getattr(batch, "sizes", None) or (self.loss_fn.residual_count(batch),)  # one term: a plain batch
        blocks = row_blocks(sizes, world)
        if blocks is None:
            return self.reduce(partial(torch.arange(self.loss_fn.residual_count(batch))))
        parts = (partial(torch.cat([torch.arange(s.start, s.stop) for s in block])) for block in blocks)
        return world.tree_sum(parts)  # (streamed: one block's partial sum at a time, added into the others)

    def loss(self, theta: torch.Tensor, batch) -> torch.Tensor:
        """L(theta), no autograd graph: one query."""
        self.queries += 1
        with torch.no_grad():
            return self.reduce(self.loss_fn(self.network(theta), batch))

    def losses(self, thetas: torch.Tensor, batch) -> torch.Tensor:
        """L(theta_i) for a batch thetas (P, d) -> (P,), no graph: P queries, batched.

        Chunks of ``queries_per_chunk`` parameter vectors go through one vmapped
        forward; with a chunk of 1 (queries large enough to fill the machine on
        their own) it is one forward per vector, without vmap's overhead.
        """
        return self.reduce(self._split(self._batched, self.loss_fn, thetas, batch))

    def losses_looped(self, thetas: torch.Tensor, batch) -> torch.Tensor:
        """The same as ``losses`` with one forward per parameter vector (reference)."""
        return self._looped(self.loss_fn, thetas, batch)

    def residuals(self, thetas: torch.Tensor, batch) -> torch.Tensor:
        """The residual vectors rho(theta_i) (P, n) of a least-squares loss, |rho|^2 = L: P queries,
        batched and chunked like ``losses``."""
        return self._split(self._batched, self._residual_vector(), thetas, batch)

    def residual_count(self, batch) -> int:
        """n, the length of the residual vector on ``batch``."""
        self._residual_vector()
        return self.loss_fn.residual_count(batch)

    def residual_jacobian(self, theta: torch.Tensor, batch, columns: int | None = None) \
            -> tuple[torch.Tensor, torch.Tensor]:
        """(rho (n,), d rho / d theta (n, d)) by reverse-mode autodiff (first order): one query.
        ``columns``: at most this many of the network's parameters at a time in its Jacobian at the
        stencil rows (a stencil loss; None: all at once)."""
        residual_vector = self._residual_vector()
        if self.layered:
            return self._layered_residual_jacobian(theta.detach(), batch, columns)
        self.queries += 1
        with torch.enable_grad():
            value = lambda t: residual_vector(self.network(t), batch)
            # cotangents in chunks: one vmapped pull-back of all n rows at once costs ~4x more
            matrix = torch.func.jacrev(value, chunk_size=16)(theta.detach())
        with torch.no_grad():
            return value(theta), matrix

    def _layered_residual_jacobian(self, theta: torch.Tensor, batch, columns: int | None = None) \
            -> tuple[torch.Tensor, torch.Tensor]:
        """d rho / d theta (n, d) of a PINN loss rho = criterion(N, batch) of the network values N (R,)
        at ``inputs(batch)`` (a stencil backend), by the chain rule

            d rho / d theta = (d rho / d N) (d N / d theta):

        dN/dtheta (R, d) row by row (each row's gradient by back-propagation, vmapped over the rows),
        then each row added to the one residual its value enters, times that residual's derivative by
        it (residual.Perturbations.sensitivities). This costs O(R d), where reverse mode over the whole
        residual vector costs O(n R d). The unknowns of an inverse problem (the last k coordinates)
        enter the criterion directly: their k columns by forward mode. One query.

        ``columns`` bounds the memory: dN/dtheta is held ``columns`` parameters at a time (R x columns
        values), each block from the rows' gradients computed again, so a block fewer than the d
        parameters costs one more pass of the gradients."""
        self.queries += 1
        k, d = self.unknowns, theta.numel()
        raw = (theta[d - k:],) if k else ()
        network = lambda t, x: self.network(t)(x[None])[0]
        X = self.loss_fn.inputs(batch)
        rows = max(1, _JACOBIAN_VALUES // d)
        with torch.no_grad():
            N = self._outputs(theta, X)
        criterion = lambda values, *unknowns: self.loss_fn.residual_criterion(values, batch, *unknowns)
        blocks = []
        with torch.enable_grad():
            rho = criterion(N, *raw)
            row, value = self.loss_fn.around(N, batch, *raw).sensitivities()  # (R,) each
            for start in range(0, d - k, columns or d):
                block = slice(start, min(d - k, start + (columns or d)))
                dN = torch.cat([vmap(torch.func.jacrev(network), in_dims=(None, 0))(theta, part)[:, block]
                                for part in torch.split(X, rows)])  # (R, block)
                blocks.append(dN.new_zeros(len(rho), dN.shape[1]).index_add_(0, row, dN.mul_(value[:, None])))
                del dN
            if k:
                blocks.append(torch.func.jacfwd(lambda u: criterion(N, u))(raw[0]))
            matrix = torch.cat(blocks, 1)  # (n, d)
        return rho.detach(), matrix.detach()

    def _outputs(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """The network's values at the stencil rows X (R, D), ``layered_rows`` rows at a time (no graph)."""
        network = self.network(theta)
        with torch.no_grad():
            return torch.cat([network(part) for part in torch.split(X, self.layered_rows or len(X))])

    def _residual_vector(self):
        residual_vector = getattr(self.loss_fn, "residual_vector", None)
        if residual_vector is None:
            raise PinnzoError("this loss is not a sum of squares (it has no residual vector): Gauss-Newton "
                              "optimizers (gn, zo-gn) apply to PINN losses")
        return residual_vector

    def _batched(self, value, thetas: torch.Tensor, batch) -> torch.Tensor:
        """value(network(theta_i), batch) for each row of thetas, stacked; len(thetas) queries."""
        if self.queries_per_chunk == 1:
            return self._looped(value, thetas, batch)
        self.queries += len(thetas)
        with torch.no_grad():
            batched = vmap(lambda theta: value(self.network(theta), batch), randomness="same")
            return torch.cat([batched(chunk) for chunk in torch.split(thetas, self.queries_per_chunk)])

    def _looped(self, value, thetas: torch.Tensor, batch) -> torch.Tensor:
        self.queries += len(thetas)
        with torch.no_grad():
            return torch.stack([value(self.network(theta), batch) for theta in thetas])

    @property
    def layered(self) -> bool:
        """Whether ``coordinate_losses`` can reuse the unperturbed layers (an MLP with a
        loss of the form criterion(network(inputs(batch)), batch))."""
        from pinnzo.optim.coordinates import supports

        return supports(getattr(self.model, "network", self.model), self.loss_fn)

    def coordinate_losses(self, theta: torch.Tensor, batch, chosen: torch.Tensor, mu: float) -> torch.Tensor:
        """L(theta + mu e_j) for the coordinates ``chosen`` (E,) -> (E,): E queries, computed
        by re-running only the layers after each perturbed one (optim/coordinates.py)."""
        return self.reduce(self._split(
            lambda _, part, b: self._coordinates("losses", self.loss_fn.criterion, self.loss_fn, theta, b, part, mu),
            None, chosen, batch))

    def coordinate_residuals(self, theta: torch.Tensor, batch, chosen: torch.Tensor, mu: float,
                             linear: bool = False) -> torch.Tensor:
        """rho(theta + mu e_j) for the coordinates ``chosen`` (E,) -> (E, n), the layered way: E queries.
        ``linear``: the network's outputs move by mu times their derivative along e_j instead
        (LayeredForward.sensitivities), which costs one column per unit, not per parameter."""
        value = self._residual_vector()
        return self._split(
            lambda _, part, b: self._coordinates("residuals", self.loss_fn.residual_criterion, value, theta, b, part,
                                                 mu, linear),
            None, chosen, batch)

    def coordinate_outputs(self, theta: torch.Tensor, batch, mu: float,
                           linear: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's outputs F (R, C) at ``inputs(batch)`` and their changes dF (d, R, C) when each
        coordinate of theta moves by mu, the layered way (optim/coordinates.py): d + 1 queries.
        ``linear``: mu times their derivatives instead (LayeredForward.sensitivities)."""
        from pinnzo.optim.coordinates import LayeredForward

        if not self.layered or self.unknowns:
            raise PinnzoError("the outputs' Jacobian by layered queries needs an MLP whose loss is a criterion "
                              "of its outputs at fixed points")
        self.queries += 1 + theta.numel()
        with torch.no_grad():
            forward = LayeredForward(self.model, self.unflatten(theta), self.loss_fn.inputs(batch))
            changes = theta.new_empty((theta.numel(), *forward.output.shape))
            for part, change in forward.changes(torch.arange(theta.numel(), device=theta.device), mu,
                                                linear=linear):
                changes[part] = change
        return forward.output, changes

    def coordinate_rounding_gain(self, theta: torch.Tensor, batch) -> float | None:
        """The rounding gain of ``coordinate_residuals``' differences from the residuals at theta, when
        the loss takes the network's changes directly (residual.Perturbations.rounding_gain: the
        largest stencil part over the largest solution value); None on the criterion path (an inverse
        problem, a loss without ``around``), whose values round like black-box queries. One query."""
        around = getattr(self.loss_fn, "around", None)
        if around is None or self.unknowns or not self.layered:
            return None
        self.queries += 1
        with torch.no_grad():
            return around(self._outputs(theta, self.loss_fn.inputs(batch)), batch).rounding_gain()

    def _split(self, evaluate, value, items: torch.Tensor, batch) -> torch.Tensor:
        """evaluate(value, items, batch) for P items (parameter vectors or coordinates); with the
        queries split over ranks, each rank evaluates its share and the results are gathered (the
        query count stays P on every rank)."""
        world = self.world
        if world.size == 1 or world.sharded or len(items) < world.size:
            return evaluate(value, items, batch)
        before = self.queries
        mine = evaluate(value, items[world.shard(len(items))], batch)
        self.queries = before + len(items)
        counts = [len(range(len(items))[world.shard_of(rank, len(items))]) for rank in range(world.size)]
        return world.all_gather(mine, counts)

    def _coordinates(self, kind: str, criterion, value, theta: torch.Tensor, batch, chosen: torch.Tensor,
                     mu: float, linear: bool = False) -> torch.Tensor:
        """The loss (or residual vector: ``kind``) at theta + mu e_j for each of ``chosen``.

        The network's coordinates come from its outputs' changes (optim/coordinates.py): through
        ``loss_fn.around(outputs, batch)`` when the loss takes changes directly (a PINN loss, whose
        stencil atoms are linear in the outputs), else through ``criterion`` of the moved outputs.
        The unknowns' coordinates (the last ``unknowns`` of theta) are ordinary queries of
        ``value(network, batch)``.
        """
        params, k = self.unflatten(theta), self.unknowns
        layered = chosen < theta.numel() - k
        parts = []
        with torch.no_grad():
            self.queries += int(layered.sum())
            if layered.any():
                extra = (params[UNKNOWNS],) if k else ()
                parts.append((layered.nonzero().flatten(),
                              self._layered(kind, criterion, params, extra, batch, chosen[layered], mu, linear)))
            if not layered.all():
                rest = (~layered).nonzero().flatten()
                thetas = theta.repeat(len(rest), 1)
                thetas[torch.arange(len(rest)), chosen[rest]] += mu
                parts.append((rest, self._batched(value, thetas, batch)))
        result = theta.new_empty((len(chosen), *parts[0][1].shape[1:]))
        for part, values in parts:
            result[part] = values
        return result

    def _layered(self, kind: str, criterion, params: dict[str, torch.Tensor], extra: tuple, batch,
                 chosen: torch.Tensor, mu: float, linear: bool) -> torch.Tensor:
        """``_coordinates``' values (E, ...) for network coordinates ``chosen`` (E,), a part of the points
        at a time when their stencils exceed ``layered_rows`` (``loss_fn.split``): a part's loss is its
        share of the step's (summed), its residuals are rows of the step's (``loss_fn.join_rows``)."""
        from pinnzo.optim.coordinates import LayeredForward

        prefix = "network." if extra else ""
        network = self.model.network if extra else self.model
        network_params = {name[len(prefix):]: tensor for name, tensor in params.items() if name.startswith(prefix)}
        split = getattr(self.loss_fn, "split", None)
        batches = split(batch, self.layered_rows) if split is not None and self.layered_rows else [batch]
        values = []
        for part in batches:
            forward = LayeredForward(network, network_params, self.loss_fn.inputs(part))
            around = getattr(self.loss_fn, "around", None) if not extra else None
            around = around(forward.output, part) if around is not None else None
            moved = getattr(around, kind) if around is not None else \
                lambda change: criterion(forward.output + change, part, *extra)  # noqa: B023
            value = None
            for index, change in forward.changes(chosen, mu, linear=linear):
                block = moved(change)
                if value is None:
                    value = block.new_empty((len(chosen), *block.shape[1:]))
                value[index] = block
            values.append(value)
            del forward, around, moved  # before the next part's
        if len(values) == 1:
            return values[0]
        return sum(values) if kind == "losses" else self.loss_fn.join_rows(values, batches)

    def value_and_grad(self, theta: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(L(theta), dL/dtheta) by back-propagation (first-order training): one query."""
        self.queries += 1
        theta = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            value = self.loss_fn(self.network(theta), batch)
            (gradient,) = torch.autograd.grad(value, theta)
        return self.reduce(value.detach()), self.reduce(gradient)
