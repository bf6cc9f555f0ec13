"""What one optimizer step reports to the training loop."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepInfo:
    """What one step did: the training loss at theta, the stage, notes for the log, whether the
    optimizer can make no more progress (``converged``: the loop then stops), and whether it can make
    none on these points (``stalled``: the task draws fresh ones, or the loop stops when it has none)."""

    loss: float
    stage: str = ""
    events: list[str] = field(default_factory=list)
    converged: bool = False
    stalled: bool = False
