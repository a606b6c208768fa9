"""The two lock files beside a cluster's datadir (not in it: initdb wants an empty directory).

``.NAME.lock`` serialises start, stop and restart across processes; ``.NAME.users`` counts
the processes using the server, so the last one out can stop it. Both are fcntl flocks,
which the kernel drops when their holder dies, even by SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import IO


class ClusterLocks:
    """The lifecycle lock and the users lock of the cluster in ``datadir``."""

    def __init__(self, datadir: Path) -> None:
        self.lock_path = datadir.with_name(f".{datadir.name}.lock")
        self.users_path = datadir.with_name(f".{datadir.name}.users")

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the lifecycle lock for the block, waiting for any other holder."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
            yield

    def share(self) -> IO[str]:
        """A shared hold on the users lock, until the returned file is closed."""
        self.users_path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.users_path.open("a")
        fcntl.flock(fh, fcntl.LOCK_SH)
        return fh

    @contextlib.contextmanager
    def unused(self) -> Iterator[bool]:
        """True, holding the users lock exclusively for the block, when nobody shares it;
        False at once when someone does."""
        self.users_path.parent.mkdir(parents=True, exist_ok=True)
        with self.users_path.open("a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
