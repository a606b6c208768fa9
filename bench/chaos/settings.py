"""The chaos soak's fixed settings: the workers' lease, grace and attempts, and the pace and
length of its faults."""

from __future__ import annotations

from pathlib import Path

from schema.states import TERMINAL_JOB_STATUSES

ROOT = Path(__file__).resolve().parents[2]
LEASE_S, GRACE_S, MAX_ATTEMPTS = 3, 5, 5
CRASH_OUTAGE_S = 4.0  # longer than a lease: rescues and fenced late results must happen
DRAIN_S = 180.0
SLACK_S = 10.0  # a 503 this soon after the database came back still belongs to the outage
PAUSE_EVERY_S = (4.0, 8.0)  # SIGSTOP a worker this often (one paused at a time)
SHORT_PAUSE_S = (0.5, 0.7 * LEASE_S)  # its leases may well survive
LONG_PAUSE_S = (LEASE_S + 2, 3 * LEASE_S)  # its leases expire: it is rescued, then fenced
SETTLE_S = 2 * LEASE_S  # calm before the held-lock phase: rescues done, backoffs over
MIN_LOCK_RATIO = 0.5  # other jobs keep at least half their throughput under a held job row
PROVIDER = "simulated"
TERMINAL = sorted(s.value for s in TERMINAL_JOB_STATUSES)
