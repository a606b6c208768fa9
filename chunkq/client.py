"""The HTTP client behind ``chunkq submit`` and ``chunkq status``: submit, poll, show progress.

Each command returns its exit code (``chunkq.exits``): the job's final status, or what went
wrong on the way.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from chunkq import local_key
from chunkq.console import say
from chunkq.exits import (
    EXIT_BY_STATUS,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REJECTED,
    CommandError,
)
from chunkq.progress import Outage, Progress
from chunkq.report import describe

# A server restart (chunkq up restarting gunicorn) must not end a long wait.
OUTAGE_TOLERANCE_S = 60.0


def read_text(path: str) -> str:
    """The text of ``path`` (``-`` is stdin), which must be UTF-8."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise CommandError(f"no such file: {path}", EXIT_REJECTED) from exc
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}", EXIT_REJECTED) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        name = "stdin" if path == "-" else path
        raise CommandError(
            f"{name} is not UTF-8 text (invalid byte at offset {exc.start}); convert it first,"
            " e.g. with iconv -t UTF-8",
            EXIT_REJECTED,
        ) from exc


@dataclass(frozen=True, slots=True)
class ApiKey:
    """The key a command sends, and where it came from (for the message when it is refused)."""

    key: str
    source: str


def api_key_for(url: str, given: str | None) -> ApiKey | None:
    """``--api-key`` / CHUNKQ_API_KEY; without one, for a server on this machine, the key a
    local ``chunkq up`` keeps in $CHUNKQ_HOME/api_key. The file's key is never sent to
    another host unasked."""
    if given and given.strip():
        return ApiKey(given.strip(), "--api-key / CHUNKQ_API_KEY")
    if local_key.is_loopback(url):
        path = local_key.key_path()
        if (kept := local_key.read_key(path)) is not None:
            return ApiKey(kept, str(path))
    return None


class ApiClient(httpx.Client):
    """An httpx client for one chunkq server, sending ``api_key`` (if any) on every request."""

    def __init__(self, url: str, api_key: ApiKey | None) -> None:
        headers = {"Authorization": f"Bearer {api_key.key}"} if api_key else {}
        # Writes may carry tens of MB; reads are small and should be quick.
        timeout = httpx.Timeout(30.0, write=120.0, read=120.0)
        super().__init__(base_url=url, timeout=timeout, headers=headers)
        self.api_key = api_key


def request(client: ApiClient, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """One API call; any answer but 2xx JSON becomes a CommandError saying what went wrong."""
    base = str(client.base_url).rstrip("/")
    try:
        response = client.request(method, path, **kwargs)
    except httpx.ConnectError as exc:
        raise CommandError(
            f"the chunkq server is not reachable at {base} ({exc});"
            " start one with `chunkq up`, or pass --url / set CHUNKQ_URL"
        ) from exc
    except httpx.TimeoutException as exc:
        raise CommandError(f"{base} did not answer in time ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise CommandError(f"talking to {base} failed: {exc}") from exc
    if response.is_success:
        try:
            return dict(response.json())
        except ValueError as exc:
            raise CommandError(f"{base} answered with something that is not JSON") from exc
    if response.status_code == 401:
        raise CommandError(_unauthorized(base, response, client.api_key), EXIT_REJECTED)
    raise CommandError(
        _describe_error(response), EXIT_REJECTED if response.is_client_error else EXIT_ERROR
    )


def _unauthorized(base: str, response: httpx.Response, api_key: ApiKey | None) -> str:
    """What a 401 means for this user: which key was refused (if any), and how to pass one."""
    try:
        detail = str(response.json().get("detail") or "")
    except (ValueError, AttributeError):
        detail = ""
    detail = f" ({detail})" if detail else ""
    if api_key is None:
        return (
            f"{base} needs an API key (401){detail}: pass one with --api-key KEY or set"
            " CHUNKQ_API_KEY. `chunkq keys create` makes one; a local `chunkq up` keeps the key"
            " it made in $CHUNKQ_HOME/api_key, which is used by itself for a server on this"
            " machine"
        )
    return (
        f"{base} refused the API key from {api_key.source} (401){detail}: pass a valid key"
        " with --api-key KEY or set CHUNKQ_API_KEY (`chunkq keys list` shows which keys are"
        " active, `chunkq keys create` makes one)"
    )


def _describe_error(response: httpx.Response) -> str:
    """A problem+json body as title, detail and field errors; anything else as status + text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "title" not in body:
        snippet = response.text.strip()[:200]
        return f"the server answered {response.status_code}: {snippet or response.reason_phrase}"
    lines = [f"{body.get('title')} ({response.status_code}): {body.get('detail', '')}"]
    for error in body.get("errors") or []:
        if isinstance(error, dict):
            lines.append(f"  {error.get('field')}: {error.get('detail')}")
    return "\n".join(lines)


def make_client(url: str, api_key: ApiKey | None = None) -> ApiClient:
    """A client for the server at ``url``; a malformed URL is the user's error."""
    if not url.startswith(("http://", "https://")):
        raise CommandError(f"--url must start with http:// or https://, got {url!r}", EXIT_REJECTED)
    return ApiClient(url, api_key)


def submit(url: str, text: str, max_chunk_chars: int, api_key: ApiKey | None) -> dict[str, Any]:
    """POST the text; returns the 202 body (job_id, status, chunks_total, …)."""
    with make_client(url, api_key) as client:
        body = {"raw_text": text, "max_chunk_chars": max_chunk_chars}
        return request(client, "POST", "/v1/analyze", json=body)


def follow(
    url: str,
    job_id: str,
    interval: float,
    stream: TextIO | None = None,
    *,
    api_key: ApiKey | None = None,
    chunks: bool = True,
) -> dict[str, Any]:
    """Poll the job until it is terminal and its reduce step (if it has one) has ended,
    showing progress on stderr; returns the last report.

    Without ``chunks``, the reports leave out the chunk entries (``?chunks=false``: a big
    job's are megabytes). A server that stops answering is said once, and its return once;
    it may stay away for OUTAGE_TOLERANCE_S before the wait fails.
    """
    progress = Progress(stream or sys.stderr)
    outage = Outage(url, progress, OUTAGE_TOLERANCE_S)
    interval = max(interval, 0.05)  # --interval 0 must not hammer the server
    params = {} if chunks else {"chunks": "false"}
    waiting_for_reduce = False
    with make_client(url, api_key) as client:
        while True:
            try:
                report = request(client, "GET", f"/v1/analyze/{job_id}", params=params)
            except CommandError as exc:
                # 4xx (unknown job, a refused key) is final; an unreachable or failing server
                # may come back.
                if exc.code == EXIT_REJECTED or not outage.failed(time.monotonic(), _cause(exc)):
                    progress.close()
                    raise
                time.sleep(min(5.0, max(interval, 1.0)))
                continue
            outage.answered(time.monotonic())
            progress.update(report)
            if report.get("status") in EXIT_BY_STATUS:
                if not _reduce_unsettled(report):
                    progress.close()
                    return report
                if not waiting_for_reduce:
                    progress.note(f"job {job_id} finished; waiting for its reduce step")
                    waiting_for_reduce = True
            time.sleep(interval)


def _cause(exc: CommandError) -> str:
    """Why a poll failed, in a few words: the transport error's kind, or the server's answer."""
    cause = exc.__cause__
    return type(cause).__name__ if isinstance(cause, httpx.TransportError) else str(exc)


def _reduce_unsettled(report: dict[str, Any]) -> bool:
    """Whether the job's reduce step (if it has one) is still to run or running."""
    reduce = (report.get("analysis_result") or {}).get("reduce")
    return isinstance(reduce, dict) and reduce.get("status") in ("pending", "running")


def human_output(as_json: bool, summary: bool) -> bool:
    """Whether ``--wait`` ends with the human summary: only for a person at a terminal.

    stdout stays exactly the final JSON when it is piped or captured, since scripts parse
    it; ``--json`` asks for the JSON on a terminal too, and ``--summary`` keeps its own JSON.
    """
    return not (as_json or summary) and sys.stdout.isatty()


def submit_file(
    path: str,
    *,
    url: str,
    max_chunk_chars: int,
    wait: bool,
    interval: float,
    api_key: str | None = None,
    summary: bool = False,
    as_json: bool = False,
) -> int:
    """``chunkq submit``: submit a file; with ``wait`` (or ``summary``), follow it and exit
    by its final status."""
    job_id = None
    human = human_output(as_json, summary)
    try:
        key = api_key_for(url, api_key)
        text = read_text(path)
        accepted = submit(url, text, max_chunk_chars, key)
        if not (wait or summary):
            print_report(accepted)
            return EXIT_OK
        job_id = accepted["job_id"]
        print(f"submitted job {job_id} ({accepted.get('chunks_total')} chunks)", file=sys.stderr)
        report = follow(url, job_id, interval, api_key=key, chunks=not (summary or human))
    except CommandError as exc:
        say(str(exc))
        return exc.code
    except KeyboardInterrupt:
        return _interrupted(url, job_id)
    _print_final(report, summary=summary, human=human)
    return EXIT_BY_STATUS[report["status"]]


def show_status(
    job_id: str,
    *,
    url: str,
    wait: bool,
    interval: float,
    api_key: str | None = None,
    summary: bool = False,
    as_json: bool = False,
) -> int:
    """``chunkq status``: show a job's report; with ``wait`` (or ``summary``), follow it
    like ``submit``, and end the same way."""
    human = (wait or summary) and human_output(as_json, summary)
    try:
        key = api_key_for(url, api_key)
        if wait or summary:
            report = follow(url, job_id, interval, api_key=key, chunks=not (summary or human))
        else:
            with make_client(url, key) as http:
                report = request(http, "GET", f"/v1/analyze/{job_id}")
    except CommandError as exc:
        say(str(exc))
        return exc.code
    except KeyboardInterrupt:
        return _interrupted(url, job_id)
    _print_final(report, summary=summary, human=human)
    return EXIT_BY_STATUS.get(report.get("status", ""), EXIT_OK)


def _print_final(report: dict[str, Any], *, summary: bool, human: bool) -> None:
    """What a command ends with on stdout: the human summary, the summary JSON or the report."""
    if human:
        print(describe(report), flush=True)
    else:
        print_report(summary_of(report) if summary else report)


def summary_of(report: dict[str, Any]) -> Any:
    """What ``--summary`` prints: ``analysis_result.summary``, or, when the job has a reduce
    step, ``{"summary": ..., "reduce": ...}`` (null for a job that has no result)."""
    result = report.get("analysis_result") or {}
    if "reduce" in result:
        return {"summary": result.get("summary"), "reduce": result["reduce"]}
    return result.get("summary")


def _interrupted(url: str, job_id: str | None) -> int:
    print("\nchunkq: interrupted", file=sys.stderr)
    if job_id:
        hint = f"chunkq status {job_id} --wait --url {url}"
        print(f"job {job_id} keeps running on the server; follow it with: {hint}", file=sys.stderr)
    return EXIT_INTERRUPTED


def print_report(report: Any) -> None:
    """The final JSON on stdout, pretty, for humans and for ``jq`` alike."""
    print(json.dumps(report, indent=2, ensure_ascii=False), flush=True)
