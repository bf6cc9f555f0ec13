"""What one optimizer step reports to the training loop."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepInfo:
    """What one step did: the training loss at theta, the stage, notes for the log, and whether the
    optimizer can make no more progress (the loop then stops)."""

    loss: float
    stage: str = ""
    events: list[str] = field(default_factory=list)
    converged: bool = False
