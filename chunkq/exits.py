"""How a ``chunkq`` command ends: its exit codes, and the error that carries one.

Exit codes are part of the command line's interface (scripts branch on them), so they live
here as constants and in ``EXIT_HELP``, which ``--help`` shows. Nothing here imports more
than the standard library: ``--help`` reads it.
"""

from __future__ import annotations

EXIT_OK = 0  # submitted (no --wait), or the job COMPLETED
EXIT_ERROR = 1  # server unreachable, or an answer that is not the API's
EXIT_REJECTED = 2  # bad input: unreadable file, or the server refused the request (4xx, 401 too)
EXIT_BY_STATUS = {"COMPLETED": 0, "PARTIAL_SUCCESS": 3, "FAILED": 4, "CANCELLED": 5}
EXIT_INTERRUPTED = 130  # the shell's convention for Ctrl-C
# 128 + SIGPIPE: what a shell reports for a writer whose reader went away (`yes | head`),
# so `set -o pipefail` treats `chunkq status ID | head` as it treats any other tool.
EXIT_PIPE_CLOSED = 141
EXIT_HELP = """exit codes of submit and status:
  0  submitted (without --wait), or the job COMPLETED
  1  the server is not reachable, or failed (5xx)
  2  bad input: file missing or not UTF-8, or the request was rejected (4xx problem,
     a missing or refused API key included)
  3  PARTIAL_SUCCESS    4  FAILED    5  CANCELLED
  130  interrupted (Ctrl-C); the job keeps running on the server
  141  (any command) stdout was closed early, as by `| head`; nothing more is printed"""

JOBS_EXIT_HELP = """exit codes of jobs:
  0  listed (none found included)
  1  the server is not reachable, or failed (5xx)
  2  bad input, or the request was rejected (4xx problem, a missing or refused API key
     included)"""


class CommandError(Exception):
    """A failure to report to the user as one message, with the exit code to use."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code
