"""The training loss as a pure function of a flat parameter vector theta (d,) and a batch.

Zeroth-order optimizers only call ``loss`` and ``losses``; the N perturbed
losses of a step are one ``losses(thetas, batch)`` call, evaluated as batched
forwards (torch.func.functional_call + vmap over parameter sets), chunked so a
chunk stays within the memory budget. Every evaluation at one parameter
vector is one *query*; the objective is the one owner of the count (``queries``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

LossFn = Callable[[Callable[[torch.Tensor], torch.Tensor], Any], torch.Tensor]


class Objective:
    """loss(theta, batch) = loss_fn(network with parameters theta, batch).

    Args:
        model: the network (its parameters define the layout of theta).
        loss_fn: (network callable (B, D) -> (B,), batch) -> scalar loss.
        queries_per_chunk: parameter vectors evaluated together in one vmap.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, queries_per_chunk: int = 16):
        self.model, self.loss_fn = model, loss_fn
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

    def network(self, theta: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The network with parameters theta, as a function of its inputs."""
        params = self.unflatten(theta)
        return lambda X: functional_call(self.model, params, (X,))

    def loss(self, theta: torch.Tensor, batch) -> torch.Tensor:
        """L(theta), no autograd graph: one query."""
        self.queries += 1
        with torch.no_grad():
            return self.loss_fn(self.network(theta), batch)

    def losses(self, thetas: torch.Tensor, batch) -> torch.Tensor:
        """L(theta_i) for a batch thetas (P, d) -> (P,), no graph: P queries, batched.

        Chunks of ``queries_per_chunk`` parameter vectors go through one vmapped
        forward; with a chunk of 1 (queries large enough to fill the machine on
        their own) it is one forward per vector, without vmap's overhead.
        """
        if self.queries_per_chunk == 1:
            return self.losses_looped(thetas, batch)
        self.queries += len(thetas)
        with torch.no_grad():
            batched = vmap(lambda theta: self.loss_fn(self.network(theta), batch), randomness="same")
            return torch.cat([batched(chunk) for chunk in torch.split(thetas, self.queries_per_chunk)])

    def losses_looped(self, thetas: torch.Tensor, batch) -> torch.Tensor:
        """The same as ``losses`` with one forward per parameter vector (reference)."""
        self.queries += len(thetas)
        with torch.no_grad():
            return torch.stack([self.loss_fn(self.network(theta), batch) for theta in thetas])

    @property
    def layered(self) -> bool:
        """Whether ``coordinate_losses`` can reuse the unperturbed layers (an MLP with a
        loss of the form criterion(network(inputs(batch)), batch))."""
        from pinnzo.optim.coordinates import supports

        return supports(self.model, self.loss_fn)

    def coordinate_losses(self, theta: torch.Tensor, batch, chosen: torch.Tensor, mu: float) -> torch.Tensor:
        """L(theta + mu e_j) for the coordinates ``chosen`` (E,) -> (E,): E queries, computed
        by re-running only the layers after each perturbed one (optim/coordinates.py)."""
        from pinnzo.optim.coordinates import perturbed_outputs

        self.queries += len(chosen)
        result = torch.empty(len(chosen), dtype=theta.dtype, device=theta.device)
        with torch.no_grad():
            inputs = self.loss_fn.inputs(batch)
            for part, outputs in perturbed_outputs(self.model, self.unflatten(theta), inputs, chosen, mu):
                result[part] = self.loss_fn.criterion(outputs, batch)
        return result

    def value_and_grad(self, theta: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(L(theta), dL/dtheta) by back-propagation (first-order training): one query."""
        self.queries += 1
        theta = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            value = self.loss_fn(self.network(theta), batch)
            (gradient,) = torch.autograd.grad(value, theta)
        return value.detach(), gradient
