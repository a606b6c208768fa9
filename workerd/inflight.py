"""The attempts one worker holds: each claimed chunk or reduction with its call, until its
outcome is written or it is handed back; which ran out of time; which are the circuit's
probes."""

from __future__ import annotations

import uuid
from typing import Any

from schema.queue import ClaimedChunk
from schema.queue.reductions import ClaimedReduction
from workerd.attempts import Key, Outcome, ReduceOutcome
from workerd.circuit import Circuit
from workerd.providers import Call


class InFlight:
    """Keyed by a chunk's (job_id, seq), or by the job id for a reduction."""

    def __init__(self, circuit: Circuit) -> None:
        self.chunks: dict[tuple[uuid.UUID, int], ClaimedChunk] = {}
        self.reductions: dict[uuid.UUID, ClaimedReduction] = {}
        self.calls: dict[Key, Call] = {}
        # Attempts that ran out of time: their failure is recorded, a late result ignored.
        self.timed_out: set[Key] = set()
        self.probes: set[Key] = set()  # our attempts that are the open circuit's probe
        self._circuit = circuit

    def __len__(self) -> int:
        return len(self.chunks) + len(self.reductions)

    def add(self, claimed: ClaimedChunk | ClaimedReduction, call: Call, *, probe: bool) -> None:
        """Hold a newly claimed attempt; ``probe``: it is the open circuit's probe."""
        key: Any
        if isinstance(claimed, ClaimedReduction):
            key = claimed.job_id
            self.reductions[key] = claimed
        else:
            key = claimed.key
            self.chunks[key] = claimed
        self.calls[key] = call
        if probe:
            self.probes.add(key)
            self._circuit.probing += 1

    def claimed(self, key: Key) -> ClaimedChunk | ClaimedReduction:
        return self.reductions[key] if isinstance(key, uuid.UUID) else self.chunks[key]

    def live(self) -> tuple[list[ClaimedChunk], list[ClaimedReduction]]:
        """The chunks and reductions whose attempts have not run out of time."""
        return (
            [c for c in self.chunks.values() if c.key not in self.timed_out],
            [r for r in self.reductions.values() if r.job_id not in self.timed_out],
        )

    def current(self, outcome: Outcome) -> bool:
        """Whether a finished attempt is still ours to record (not timed out, not abandoned)."""
        if isinstance(outcome, ReduceOutcome):
            key: Any = outcome.reduction.job_id
            ours = self.reductions.get(key) is outcome.reduction
        else:
            key = outcome.chunk.key
            ours = self.chunks.get(key) is outcome.chunk
        return ours and key not in self.timed_out

    def forget(self, key: Key) -> None:
        """Drop everything held for a chunk (by key) or a reduction (by job id)."""
        if isinstance(key, uuid.UUID):
            self.reductions.pop(key, None)
        else:
            self.chunks.pop(key, None)
        self.calls.pop(key, None)
        self.timed_out.discard(key)
        if key in self.probes:
            self.probes.discard(key)
            self._circuit.probing -= 1
