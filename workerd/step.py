"""What one step of the worker did: ``Worker.run_once``'s answer, which tests read."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field


@dataclass(slots=True)
class Step:
    """What one ``run_once`` did."""

    claimed: int = 0
    recorded: int = 0
    dropped: int = 0
    rescued: int = 0
    # Attempts given up here: past their deadline, or their lease lost (cancel, rescue).
    timed_out: int = 0
    aborted: int = 0
    # Outcomes kept for a later write: another transaction holds their job's row.
    deferred: int = 0
    finalized: dict[uuid.UUID, str] = field(default_factory=dict)

    @property
    def busy(self) -> bool:
        return bool(
            self.claimed
            or self.recorded
            or self.dropped
            or self.rescued
            or self.timed_out
            or self.deferred
        )
