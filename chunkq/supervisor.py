"""The process supervisor behind ``chunkq up``: starts children, restarts the ones that die
with backoff, and stops them all on SIGINT/SIGTERM/SIGHUP within a grace period."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

from chunkq.console import say

STABLE_AFTER_S = 30  # a child that ran this long before dying starts its backoff afresh


@dataclass
class Child:
    """One supervised slot (gunicorn, or a worker); its process is replaced when it dies."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None


class Supervisor:
    """Starts children, restarts the ones that die with backoff, stops them all on a signal."""

    def __init__(self, env: dict[str, str], pass_fds: tuple[int, ...]) -> None:
        self.env = env
        self.pass_fds = pass_fds
        self.children: list[Child] = []
        self.signals = 0  # SIGINT/SIGTERM/SIGHUP received: one stops gently, two force
        # A signal cuts wait() short through this pipe. Not a threading.Event: the handler
        # runs in the main thread between two bytecodes, maybe while that thread holds the
        # Event's lock inside wait() or clear(), and setting it there would wait forever.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        """The handler for SIGINT/SIGTERM/SIGHUP: takes no lock (see ``__init__``)."""
        self.signals += 1
        with contextlib.suppress(BlockingIOError):  # a full pipe already wakes wait()
            os.write(self._wake_w, b"\0")

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``; a signal (now or since the last wait) ends it at once."""
        select.select([self._wake_r], [], [], seconds)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    def close(self) -> None:
        os.close(self._wake_r)
        os.close(self._wake_w)

    def spawn(self, child: Child) -> None:
        # Each child leads its own process group, so a terminal's Ctrl-C reaches only us and
        # every child gets the same orderly SIGTERM (gunicorn treats SIGINT as a fast exit).
        child.proc = subprocess.Popen(
            child.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            pass_fds=self.pass_fds,
            process_group=0,
            preexec_fn=_die_with_parent,
        )
        child.started_at, child.restart_at = time.monotonic(), None
        if child not in self.children:
            self.children.append(child)
        say(f"{child.name} started (pid {child.proc.pid})")

    def tick(self) -> None:
        """Reap children that died and restart each one once its backoff has passed."""
        now = time.monotonic()
        for child in self.children:
            if child.proc is not None and (code := child.proc.poll()) is not None:
                stable = now - child.started_at > STABLE_AFTER_S
                child.failures = 1 if stable else child.failures + 1
                delay = min(30.0, 0.5 * 2 ** (child.failures - 1))
                say(
                    f"{child.name} (pid {child.proc.pid}) {exit_text(code)}; restart in {delay}s",
                    level=logging.WARNING,
                )
                # Whatever it left behind in its group (gunicorn's workers) must not linger.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGTERM)
                child.proc, child.restart_at = None, now + delay
            if child.proc is None and child.restart_at is not None and now >= child.restart_at:
                self.spawn(child)

    def stop(self, timeout: float) -> None:
        """SIGTERM every child, wait up to ``timeout`` (or a second signal), then SIGKILL."""
        live = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        seen, deadline = self.signals, time.monotonic() + timeout
        while any(proc.poll() is None for proc in live):
            if self.signals > seen or time.monotonic() > deadline:
                break
            self.wait(0.1)
        for proc in live:
            if proc.poll() is None:  # not yet reaped, so its pid is still its group's id
                say(f"pid {proc.pid} did not stop in time; killing it", level=logging.WARNING)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def exit_text(code: int) -> str:
    """How a child ended, for the log: ``exited with 3`` or ``was killed by SIGKILL``."""
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"


def _die_with_parent() -> None:
    """Runs in the child before exec: on Linux, SIGTERM it if ``chunkq up`` is SIGKILLed."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _find_prctl() -> Any:
    # Looked up in the parent: importing or loading libraries between fork and exec is unsafe.
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return getattr(ctypes.CDLL(None), "prctl", None)


_PRCTL = _find_prctl()
