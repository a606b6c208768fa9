"""The chaos soak's worker processes: started, tended and replaced, and the faults done to
them: SIGKILL, SIGTERM, SIGSTOP past their leases, and a restart on another provider."""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench.chaos.report import Tally
from bench.chaos.settings import GRACE_S, LONG_PAUSE_S, PROVIDER, ROOT, SHORT_PAUSE_S


@dataclass
class Proc:
    """One ``python -m workerd`` process, its log, and what was done to it."""

    proc: subprocess.Popen[bytes]
    log: Path
    provider: str
    paused_until: float | None = None  # SIGSTOPped until then (monotonic)
    long_pauses: int = 0  # pauses that outlasted its leases

    def up(self) -> bool:
        """Logged its start, so its SIGTERM handler is installed."""
        with contextlib.suppress(OSError):
            return " started: " in self.log.read_text(errors="replace")
        return False


def tail(path: Path, lines: int = 12) -> str:
    """The last lines of a log, for a violation's message."""
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return f"(no log at {path})"


class Fleet:
    """The workers running now, those SIGTERMed and not yet gone, and the long pauses ended.

    Workers get ``env`` (set once the database is ready) and log into ``logs``.
    """

    def __init__(self, tally: Tally, rng: random.Random, logs: Path) -> None:
        self.tally = tally
        self.rng = rng
        self.logs = logs
        self.env: dict[str, str] = {}
        self.workers: list[Proc] = []
        self.stopping: list[tuple[Proc, float]] = []  # SIGTERMed, and when
        self.resumed: list[tuple[str, datetime]] = []  # (worker log, when) after long pauses

    def start_worker(self, provider: str = PROVIDER) -> None:
        """Start one worker on ``provider``."""
        self.tally.count("workers started")
        log = self.logs / f"worker-{self.tally.n['workers started']:03d}.log"
        cmd = [sys.executable, "-m", "workerd", "--concurrency", "8"]
        env = {**self.env, "CHUNKQ_PROVIDER": provider}
        with log.open("ab") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True
            )
        self.workers.append(Proc(proc, log, provider))

    def hit(self) -> None:
        """SIGTERM (one in four, if it is up) or SIGKILL a worker that is not paused, and start
        a replacement on the same provider."""
        running = [w for w in self.workers if w.paused_until is None]
        if not running:
            return
        victim = self.rng.choice(running)
        self.workers.remove(victim)
        # SIGTERM only a worker that is up: one still importing dies of the default action.
        if self.rng.random() < 0.25 and victim.up():
            victim.proc.terminate()
            self.stopping.append((victim, time.monotonic()))
            self.tally.count("worker SIGTERMs")
        else:
            victim.proc.kill()
            victim.proc.wait()
            self.tally.count("worker SIGKILLs")
        self.start_worker(victim.provider)
        self.tally.count("replacement workers")

    def pause(self) -> None:
        """SIGSTOP a worker that is up (one at a time), alternately for less and for more than
        the lease; ``tend`` sends the SIGCONT. After a long pause its chunks have been
        rescued, so whatever it then tries to record must be refused by the fence."""
        if any(w.paused_until is not None for w in self.workers):
            return
        ready = [w for w in self.workers if w.up()]
        if not ready:
            return
        w = self.rng.choice(ready)
        long = self.tally.n["worker pauses (SIGSTOP, SIGCONT)"] % 2 == 1
        w.proc.send_signal(signal.SIGSTOP)
        w.paused_until = time.monotonic() + self.rng.uniform(
            *(LONG_PAUSE_S if long else SHORT_PAUSE_S)
        )
        w.long_pauses += long
        self.tally.count("worker pauses (SIGSTOP, SIGCONT)")
        self.tally.count("  of them longer than the lease", long)

    def resume(self, w: Proc) -> None:
        """SIGCONT a paused worker, noting when if it was ever paused past its leases."""
        w.proc.send_signal(signal.SIGCONT)
        if w.long_pauses and w.paused_until is not None:
            self.resumed.append((w.log.name, datetime.now()))
        w.paused_until = None

    def resume_all(self) -> None:
        """SIGCONT every paused worker now."""
        for w in self.workers:
            if w.paused_until is not None:
                self.resume(w)

    def switch_provider(self, provider: str) -> None:
        """Restart half the workers (at least one) on ``provider`` while jobs are in flight:
        each is SIGTERMed (it finishes what it holds) and replaced by one on ``provider``, so
        the jobs under way get results from both providers."""
        others = [w for w in self.workers if w.paused_until is None and w.provider != provider]
        for w in others[: max(1, len(self.workers) // 2)]:
            self.workers.remove(w)
            if w.up():
                w.proc.terminate()
                self.stopping.append((w, time.monotonic()))
                self.tally.count("worker SIGTERMs")
            else:
                w.proc.kill()
                w.proc.wait()
                self.tally.count("worker SIGKILLs")
            self.start_worker(provider)
            self.tally.count("workers switched provider (SIGTERM, restart)")

    def tend(self) -> None:
        """A paused worker whose time is up gets its SIGCONT. A worker that exits unasked is a
        violation (and is replaced); a SIGTERMed one must exit 0 within the grace period
        plus 5 s."""
        now = time.monotonic()
        for w in self.workers:
            if w.paused_until is not None and now >= w.paused_until:
                self.resume(w)
        for w in [w for w in self.workers if w.proc.poll() is not None]:
            self.tally.violate(
                f"worker {w.log.name} exited by itself ({w.proc.returncode}):\n{tail(w.log)}"
            )
            self.workers.remove(w)
            self.start_worker(w.provider)
            self.tally.count("replacement workers")
        for w, sent in list(self.stopping):
            code, late = w.proc.poll(), time.monotonic() - sent > GRACE_S + 5
            if code is None and not late:
                continue
            self.stopping.remove((w, sent))
            if code == 0:
                self.tally.count("  of them exiting 0 in time")
            elif code is None:
                self.tally.violate(
                    f"worker {w.log.name} still up {GRACE_S + 5}s after SIGTERM:\n{tail(w.log)}"
                )
                w.proc.kill()
                w.proc.wait()
            else:
                self.tally.violate(f"worker {w.log.name} exited {code} on SIGTERM:\n{tail(w.log)}")

    def stop_all(self) -> None:
        """SIGTERM every worker (once it is up, or after 30 s) and tend them until all are gone,
        each within its grace period."""
        for w in self.workers:
            deadline = time.monotonic() + 30
            while not w.up() and w.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            w.proc.terminate()
            self.stopping.append((w, time.monotonic()))
            self.tally.count("worker SIGTERMs")
        self.workers = []
        while self.stopping:
            self.tend()
            time.sleep(0.1)

    def kill_all(self) -> None:
        """SIGKILL every worker we started that may still run."""
        for w in self.workers + [w for w, _ in self.stopping]:
            w.proc.kill()
            w.proc.wait()
