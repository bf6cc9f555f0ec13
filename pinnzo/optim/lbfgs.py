"""L-BFGS with a strong-Wolfe line search (torch.optim.LBFGS), one iteration per step.

First order: every loss evaluation of the line search back-propagates (one query
each). Quasi-Newton pairs only make sense for one fixed loss, so the history is
dropped whenever the task draws new points (every ``resample_every`` steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from pinnzo.optim.info import StepInfo


class LBFGSState(NamedTuple):
    memory: dict[str, Any]  # torch.optim.LBFGS's state of the parameter vector (history, step, ...)


@dataclass(frozen=True)
class LBFGS:
    history: int = 50
    resample_every: int = 1
    max_evaluations: int = 25  # loss evaluations of one iteration's line search, at most
    stage: str = "lbfgs"

    def schedule(self, step: int) -> float:
        return 1.0  # the line search chooses the step length

    def init(self, theta: torch.Tensor) -> LBFGSState:
        return LBFGSState({})

    def update(self, step: int, theta, state: LBFGSState, objective, batch, generator):
        parameter = theta.detach().clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([parameter], lr=1.0, max_iter=1, max_eval=self.max_evaluations,
                                      history_size=self.history, line_search_fn="strong_wolfe",
                                      tolerance_grad=0.0, tolerance_change=0.0)
        if state.memory and step % max(1, self.resample_every) != 0:
            optimizer.state[parameter].update(_copy(state.memory))
        first = []

        def closure():
            loss, gradient = objective.value_and_grad(parameter.detach(), batch)
            parameter.grad = gradient
            first.append(loss.item())
            return loss

        optimizer.step(closure)
        return parameter.detach(), LBFGSState(_copy(optimizer.state[parameter])), StepInfo(first[0], self.stage)


def _copy(memory: dict) -> dict:
    """A copy that later steps do not change (the optimizer updates its tensors in place)."""
    copied = {}
    for key, value in memory.items():
        if isinstance(value, torch.Tensor):
            copied[key] = value.clone()
        elif isinstance(value, list):
            copied[key] = [v.clone() if isinstance(v, torch.Tensor) else v for v in value]
        else:
            copied[key] = value
    return copied
