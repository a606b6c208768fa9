"""What ``--wait`` shows on stderr while it follows a job: the progress, and the server's outages.

On a terminal it is one line redrawn in place; otherwise (a log, a CI job) a plain line per
change, rate-limited, so that a long wait leaves a readable log and stdout keeps only results.
"""

from __future__ import annotations

import shutil
import time
from typing import Any, TextIO

LOG_EVERY_S = 2.0  # without a terminal, at most one progress line per this many seconds


class Progress:
    """A single redrawn bar on a terminal; otherwise a log line per change, rate-limited."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._drawn = False
        self._last: tuple[Any, ...] | None = None
        self._last_line_at = 0.0

    def update(self, report: dict[str, Any]) -> None:
        """Show the job's progress as ``report`` (a job report from the API) has it."""
        status = report.get("status", "?")
        total = int(report.get("chunks_total") or 0)
        done = int(report.get("chunks_completed") or 0)
        failed = int(report.get("chunks_failed") or 0)
        percent = float(report.get("percent") or 0.0)
        job = str(report.get("job_id", ""))
        counts = f"{done} done, {failed} failed of {total} chunks"
        if self.tty:
            columns = shutil.get_terminal_size().columns
            width = max(10, min(40, columns - 70))
            filled = round(width * percent / 100)
            bar = "#" * filled + "." * (width - filled)
            # The job's id leads, so it stays on screen however long the wait; the line is cut
            # to the terminal's width, since a wrapped line could no longer be redrawn in place.
            line = f"job {job[:8]}  [{bar}] {percent:5.1f}%  {counts}  {status}"
            # \r redraws in place; \x1b[K clears what a longer previous line left behind.
            self.stream.write(f"\r{line[: max(columns - 1, 20)]}\x1b[K")
            self._drawn = True
        else:
            key = (status, percent)
            now = time.monotonic()
            changed_status = self._last is None or self._last[0] != status
            if key == self._last or not (changed_status or now - self._last_line_at >= LOG_EVERY_S):
                return
            self._last, self._last_line_at = key, now
            self.stream.write(f"job {job}: {status} {percent:.1f}% ({counts})\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        """A message that must not be overwritten by the next redraw."""
        self.close()
        self.stream.write(message + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line so whatever is printed next starts on a fresh one."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


class Outage:
    """A server that stopped answering during a wait: said once when it starts, once when it
    ends, and given up on after ``tolerance_s`` without an answer.

    A restart takes seconds and a wait polls every fraction of one, so a line per failed poll
    would bury the progress; one line says the same.
    """

    def __init__(self, url: str, progress: Progress, tolerance_s: float) -> None:
        self.url = url
        self.progress = progress
        self.tolerance_s = tolerance_s
        self.since: float | None = None

    def failed(self, now: float, error: str) -> bool:
        """A poll found no server; returns whether to keep trying (False: past the tolerance)."""
        if self.since is None:
            self.since = now
            self.progress.note(
                f"chunkq: server at {self.url} not answering ({error}); still trying for up to"
                f" {self.tolerance_s:g} s…"
            )
        return now - self.since <= self.tolerance_s

    def answered(self, now: float) -> None:
        """A poll got an answer: the end of an outage, if there was one."""
        if self.since is not None:
            self.progress.note(
                f"chunkq: server at {self.url} answering again after {now - self.since:.0f} s"
            )
            self.since = None
