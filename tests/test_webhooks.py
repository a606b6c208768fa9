"""Webhooks, end to end on real parts: the outbox written in the transaction that ends a job,
real worker processes signing and POSTing to a real HTTP receiver on loopback, retries,
the private-address refusal, timeouts, and the deliveries endpoint of a real gunicorn."""

from __future__ import annotations

import datetime as dt
import json
import random
import shutil
import signal
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from schema import merging, queue, tenants, webhooks
from schema.chunking import split_text
from schema.errors import JobConflict
from tests.conftest import PgServer
from tests.processes import gunicorn, holding, log_tail, start_worker, stop, wait_for
from tests.support import drain, job_row, make_worker
from workerd.delivery import Attempt, deliver
from workerd.providers import SimulatedProvider
from workerd.settings import Settings
from workerd.webhooks import retry_in

TEXT = "Webhooks tell a client the moment its job is done. " * 20
# Retries a moment apart, so a test sees several attempts in a second or two.
FAST_RETRIES = "0.2,0.2,0.2,0.2"


class Receiver:
    """A real HTTP server on loopback that records every request. ``/flaky`` answers 500
    twice and then 204; ``/slow`` holds each request until ``release`` is set; any other
    path answers 204."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.finished: list[str] = []
        self.release = threading.Event()
        self._flaky = [500, 500]
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    receiver.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                    code = 204
                    if self.path == "/flaky" and receiver._flaky:
                        code = receiver._flaky.pop(0)
                if self.path == "/slow":
                    receiver.release.wait(60)
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()
                with receiver._lock:
                    receiver.finished.append(self.path)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def at(self, path: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["path"] == path]

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def enqueue(db: psycopg.Connection[Any], webhook_url: str | None, text: str = TEXT) -> uuid.UUID:
    """A job of the anonymous tenant with this webhook, written as the API writes it."""
    job_id = uuid.uuid4()
    with db.transaction():
        queue.enqueue(
            db,
            job_id,
            text,
            split_text(text, 200),
            max_chunk_chars=200,
            owner=tenants.ANONYMOUS,
            webhook_url=webhook_url,
        )
    return job_id


def events(db: psycopg.Connection[Any], job_id: uuid.UUID) -> list[dict[str, Any]]:
    return webhooks.events(db, job_id)


def event_where(
    db: psycopg.Connection[Any], job_id: uuid.UUID, status: str
) -> dict[str, Any] | None:
    found = events(db, job_id)
    return found[0] if found and found[0]["status"] == status else None


@pytest.fixture
def worker_log(tmp_path: Path) -> Path:
    return tmp_path / "worker.log"


def start(database_url: str, log: Path, **env: str) -> Any:
    return start_worker(database_url, "--concurrency", "4", log=log, **env)


# -- the outbox ------------------------------------------------------------------------

# Records the transaction of every terminal move of a job and of every outbox insert.
TX_LOG = """
CREATE TABLE tx_log (tbl text NOT NULL, job_id uuid NOT NULL, txid bigint NOT NULL);
CREATE FUNCTION log_tx() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tx_log VALUES (TG_TABLE_NAME, (to_jsonb(NEW) ->> TG_ARGV[0])::uuid,
                               txid_current());
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_terminal AFTER UPDATE ON jobs FOR EACH ROW
    WHEN (NEW.status IN ('COMPLETED', 'PARTIAL_SUCCESS', 'FAILED', 'CANCELLED')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION log_tx('id');
CREATE TRIGGER events_insert AFTER INSERT ON webhook_events FOR EACH ROW
    EXECUTE FUNCTION log_tx('job_id');
"""


def transactions(db: psycopg.Connection[Any], job_id: uuid.UUID) -> dict[str, list[int]]:
    rows = db.execute("SELECT tbl, txid FROM tx_log WHERE job_id = %s", (job_id,)).fetchall()
    found: dict[str, list[int]] = {}
    for table, txid in rows:
        found.setdefault(table, []).append(txid)
    return found


def test_finalize__writes_one_event_in_the_transaction_that_ends_the_job(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    db.execute(TX_LOG)
    job_id = enqueue(db, "https://example.com/hook")
    plain = enqueue(db, None)
    worker = make_worker(database_url, SimulatedProvider(), concurrency=4)
    try:
        assert events(db, job_id) == []
        drain(worker, db, job_id)
        drain(worker, db, plain)
    finally:
        worker.close()
    found = transactions(db, job_id)
    assert len(found["jobs"]) == 1 and found["webhook_events"] == found["jobs"]
    assert events(db, plain) == [] and "webhook_events" not in transactions(db, plain)
    (event,) = events(db, job_id)
    assert event["type"] == "job.completed" and event["status"] == "pending"
    assert event["id"].startswith("msg_") and len(event["id"]) == 4 + 32
    body = json.loads(db.execute("SELECT body FROM webhook_events").fetchone()[0])
    assert body["type"] == "job.completed" and body["timestamp"].endswith("Z")
    assert body["data"]["job_id"] == str(job_id) and body["data"]["status"] == "COMPLETED"
    assert "analysis_result" not in body["data"]

    # A second finalize finds the job terminal and writes nothing; nor does a stray add.
    with db.transaction():
        assert queue.finalize(db, job_id, merging.by_name("simulated")) is None
        assert webhooks.add_event(db, job_id) is None
    assert len(events(db, job_id)) == 1


def test_finalize__ends_the_job_even_when_its_event_report_cannot_be_built(
    database_url: str, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = enqueue(db, "https://example.com/hook")

    def broken(conn: psycopg.Connection[Any], *args: Any, **kwargs: Any) -> str:
        conn.execute("SELECT 1/0")  # a failing query, as a bug in the report would be
        raise AssertionError("unreachable")

    monkeypatch.setattr(webhooks, "report_json", broken)
    worker = make_worker(database_url, SimulatedProvider(), concurrency=4)
    try:
        drain(worker, db, job_id)
    finally:
        worker.close()
    assert job_row(db, job_id)["status"] == "COMPLETED"
    body = json.loads(db.execute("SELECT body FROM webhook_events").fetchone()[0])
    assert body["type"] == "job.completed"
    assert body["data"]["job_id"] == str(job_id) and body["data"]["status"] == "COMPLETED"
    assert "DivisionByZero" in body["data"]["error"]


def test_cancel__writes_the_event_only_if_the_cancel_commits(db: psycopg.Connection[Any]) -> None:
    db.execute(TX_LOG)
    merge = merging.by_name("builtin")
    job_id = enqueue(db, "https://example.com/hook")

    class Undo(Exception):
        pass

    with pytest.raises(Undo), db.transaction():
        queue.cancel(db, job_id, merge)
        assert [e["type"] for e in events(db, job_id)] == ["job.cancelled"]
        raise Undo
    assert events(db, job_id) == []
    assert db.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone() == ("PENDING",)

    with db.transaction():
        queue.cancel(db, job_id, merge)
    found = transactions(db, job_id)
    assert len(found["jobs"]) == 1 and found["webhook_events"] == found["jobs"]
    (event,) = events(db, job_id)
    assert event["type"] == "job.cancelled"
    body = json.loads(db.execute("SELECT body FROM webhook_events").fetchone()[0])
    assert body["data"]["status"] == "CANCELLED" and body["data"]["job_id"] == str(job_id)

    # Cancelling a terminal job is refused, and adds no second event.
    with pytest.raises(JobConflict), db.transaction():
        queue.cancel(db, job_id, merge)
    assert len(events(db, job_id)) == 1

    plain = enqueue(db, None)
    with db.transaction():
        queue.cancel(db, plain, merge)
    assert events(db, plain) == []


def test_claim__skips_events_another_worker_is_claiming(db: psycopg.Connection[Any]) -> None:
    job_id = enqueue(db, "https://example.com/hook")
    with db.transaction():
        queue.cancel(db, job_id, merging.by_name("builtin"))
    with psycopg.connect(db.info.dsn, autocommit=True) as other:
        with db.transaction():
            (mine,) = webhooks.claim(db, "a", 10, lease_s=30)
            with other.transaction():
                assert webhooks.claim(other, "b", 10, lease_s=30) == []
        assert mine.attempt == 1 and mine.secret.startswith("whsec_")
        with other.transaction():
            assert webhooks.claim(other, "b", 10, lease_s=30) == []  # running, lease alive


# -- delivery by real workers ------------------------------------------------------------


def test_webhook__is_signed_retried_with_one_id_and_visible_through_the_api(
    database_url: str, db: psycopg.Connection[Any], receiver: Receiver, worker_log: Path
) -> None:
    with db.transaction():
        mine = tenants.create_key(db, "mine")
        theirs = tenants.create_key(db, "theirs")
    env = {"CHUNKQ_AUTH": "on", "CHUNKQ_WEBHOOK_ALLOW_PRIVATE": "1"}
    proc = start(database_url, worker_log, CHUNKQ_WEBHOOK_RETRY_S=FAST_RETRIES, **env)
    try:
        with gunicorn(database_url, **env) as base:
            auth = {"Authorization": f"Bearer {mine.key}"}
            answer = httpx.post(
                f"{base}/v1/analyze",
                json={"raw_text": TEXT, "webhook_url": receiver.url("/flaky")},
                headers=auth,
                timeout=10,
            )
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["job_id"]
            wait_for(
                lambda: len(receiver.at("/flaky")) >= 3,
                30,
                f"three attempts at the receiver; worker log:\n{log_tail(worker_log)}",
            )

            def delivered() -> dict[str, Any] | None:
                got = httpx.get(f"{base}/v1/analyze/{job_id}/webhooks", headers=auth, timeout=5)
                assert got.status_code == 200, got.text
                (event,) = got.json()["data"]
                return event if event["status"] == "delivered" else None

            event = wait_for(delivered, 30, "the event to be delivered")
            assert [d["attempt"] for d in event["deliveries"]] == [1, 2, 3]
            assert [d["status_code"] for d in event["deliveries"]] == [500, 500, 204]
            errors = [d["error"] for d in event["deliveries"]]
            assert errors == ["HTTP 500 Internal Server Error"] * 2 + [None]
            assert event["attempts"] == 3 and event["finished_at"] is not None
            assert event["type"] == "job.completed"
            assert event["url"] == receiver.url("/flaky")
            assert all(isinstance(d["duration_ms"], int) for d in event["deliveries"])

            # Another tenant, or an id that is no job, gets a 404 problem.
            other = {"Authorization": f"Bearer {theirs.key}"}
            for path, headers in [(job_id, other), ("not-a-job", auth), (uuid.uuid4(), auth)]:
                got = httpx.get(f"{base}/v1/analyze/{path}/webhooks", headers=headers, timeout=5)
                assert got.status_code == 404
                assert got.headers["content-type"].startswith("application/problem+json")
    finally:
        assert stop(proc) == 0, log_tail(worker_log)

    landed = receiver.at("/flaky")
    assert len(landed) == 3
    assert len({r["headers"]["webhook-id"] for r in landed}) == 1
    assert landed[0]["headers"]["webhook-id"] == event["id"]
    assert len({r["body"] for r in landed}) == 1  # the same bytes on every attempt
    for request in landed:
        payload = Webhook(mine.webhook_secret).verify(request["body"], request["headers"])
        assert request["headers"]["content-type"] == "application/json"
        assert request["headers"]["user-agent"].startswith("chunkq")
    assert payload["type"] == "job.completed"
    assert payload["data"]["job_id"] == job_id and payload["data"]["status"] == "COMPLETED"
    assert "analysis_result" not in payload["data"]
    with pytest.raises(Exception, match="signature"):
        Webhook(theirs.webhook_secret).verify(landed[0]["body"], landed[0]["headers"])


def test_webhook__to_a_private_address_is_refused_without_connecting(
    database_url: str, db: psycopg.Connection[Any], receiver: Receiver, worker_log: Path
) -> None:
    # The name is resolved at delivery: localhost answers a loopback address.
    job_id = enqueue(db, receiver.url("/ok", host="localhost"))
    proc = start(database_url, worker_log, CHUNKQ_WEBHOOK_RETRY_S=FAST_RETRIES)
    try:
        event = wait_for(
            lambda: event_where(db, job_id, "failed"),
            30,
            f"the event to be refused; worker log:\n{log_tail(worker_log)}",
        )
    finally:
        assert stop(proc) == 0, log_tail(worker_log)
    (delivery,) = event["deliveries"]
    assert delivery["status_code"] is None
    assert delivery["error"].startswith("refused: localhost resolves to ")
    assert "loopback address" in delivery["error"]
    assert "CHUNKQ_WEBHOOK_ALLOW_PRIVATE=1" in delivery["error"]
    assert event["attempts"] == 1 and event["last_error"] == delivery["error"]
    assert receiver.requests == []


def test_webhook__slow_target_times_out_is_retried_and_holds_up_no_other(
    database_url: str, db: psycopg.Connection[Any], receiver: Receiver, worker_log: Path
) -> None:
    proc = start(
        database_url,
        worker_log,
        CHUNKQ_WEBHOOK_ALLOW_PRIVATE="1",
        CHUNKQ_WEBHOOK_RETRY_S=FAST_RETRIES,
        CHUNKQ_WEBHOOK_TIMEOUT_S="1",
    )
    try:
        slow = enqueue(db, receiver.url("/slow"))
        wait_for(
            lambda: receiver.at("/slow"),
            30,
            f"the slow target to be called; worker log:\n{log_tail(worker_log)}",
        )
        fast = enqueue(db, receiver.url("/ok"))
        event = wait_for(lambda: event_where(db, fast, "delivered"), 30, "the other event")
        assert [d["status_code"] for d in event["deliveries"]] == [204]
        # Delivered while the slow target still held its request: nothing waited on it.
        assert "/slow" not in receiver.finished

        def retried() -> bool:
            (event,) = events(db, slow)
            return len(event["deliveries"]) >= 2

        wait_for(retried, 30, "the slow event's attempts to time out and be retried")
        (event,) = events(db, slow)
        first = event["deliveries"][0]
        assert first["status_code"] is None and first["error"].startswith("timeout")
        receiver.release.set()
        event = wait_for(lambda: event_where(db, slow, "delivered"), 30, "the slow event")
        assert event["deliveries"][-1]["status_code"] == 204
        assert all(d["error"].startswith("timeout") for d in event["deliveries"][:-1])
    finally:
        receiver.release.set()
        assert stop(proc) == 0, log_tail(worker_log)
    assert len({r["headers"]["webhook-id"] for r in receiver.at("/slow")}) == 1


def test_rescue__makes_a_lost_attempt_due_again_and_fences_its_late_write(
    db: psycopg.Connection[Any],
) -> None:
    job_id = enqueue(db, "https://example.com/hook")
    with db.transaction():
        queue.cancel(db, job_id, merging.by_name("builtin"))
    start = db.execute("SELECT now()").fetchone()[0]
    with db.transaction():
        (lost,) = webhooks.claim(db, "dead", 1, lease_s=30, now=start)
    with db.transaction():
        assert webhooks.rescue(db, max_attempts=3, now=start + dt.timedelta(seconds=29)) == 0
        assert webhooks.rescue(db, max_attempts=3, now=start + dt.timedelta(seconds=31)) == 1
    (event,) = events(db, job_id)
    assert event["status"] == "pending" and event["last_error"] == webhooks.LOST
    assert event["deliveries"] == [
        {
            "attempt": 1,
            "at": event["deliveries"][0]["at"],
            "status_code": None,
            "error": webhooks.LOST,
            "duration_ms": None,
        }
    ]
    with db.transaction():
        later = start + dt.timedelta(seconds=31)
        (again,) = webhooks.claim(db, "alive", 1, lease_s=30, now=later)
        # The lost worker's late outcome is refused: it no longer owns the attempt.
        assert not webhooks.record(
            db, lost, "dead", status_code=204, error=None, duration_ms=5, retry_in_s=None
        )
        assert webhooks.record(
            db, again, "alive", status_code=204, error=None, duration_ms=5, retry_in_s=None
        )
    (event,) = events(db, job_id)
    assert event["id"] == lost.id == again.id and again.attempt == 2
    assert event["status"] == "delivered"
    assert [d["status_code"] for d in event["deliveries"]] == [None, 204]


def test_webhook__of_a_worker_killed_mid_delivery_is_sent_again_by_another(
    database_url: str, db: psycopg.Connection[Any], receiver: Receiver, tmp_path: Path
) -> None:
    env = {"CHUNKQ_WEBHOOK_ALLOW_PRIVATE": "1", "CHUNKQ_LEASE_S": "1"}
    first = start(database_url, tmp_path / "first.log", CHUNKQ_WEBHOOK_TIMEOUT_S="5", **env)
    try:
        job_id = enqueue(db, receiver.url("/slow"))
        wait_for(lambda: receiver.at("/slow"), 30, "the first worker's attempt")
    finally:
        stop(first, signal.SIGKILL)
    receiver.release.set()
    second = start(database_url, tmp_path / "second.log", CHUNKQ_WEBHOOK_TIMEOUT_S="5", **env)
    try:
        event = wait_for(
            lambda: event_where(db, job_id, "delivered"),
            90,
            f"another worker's delivery; its log:\n{log_tail(tmp_path / 'second.log')}",
            interval=0.2,
        )
    finally:
        assert stop(second) == 0, log_tail(tmp_path / "second.log")
    assert [d["error"] for d in event["deliveries"]] == [webhooks.LOST, None]
    ids = {r["headers"]["webhook-id"] for r in receiver.at("/slow")}
    assert ids == {event["id"]} and len(receiver.at("/slow")) == 2


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[tuple[Receiver, ssl.SSLContext]]:
    """The receiver over https, its certificate for the name ``localhost`` only; and a
    client context that trusts that certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    with Receiver() as r:
        r.server.socket = server_side.wrap_socket(r.server.socket, server_side=True)
        yield r, ssl.create_default_context(cafile=str(cert))


def test_deliver__over_https_connects_to_the_checked_address_and_verifies_the_name(
    tls_receiver: tuple[Receiver, ssl.SSLContext],
) -> None:
    receiver, trusted = tls_receiver
    secret = tenants.new_webhook_secret()

    def attempt(host: str) -> Attempt:
        url = f"https://{host}:{receiver.port}/ok"
        event = webhooks.ClaimedEvent("msg_" + "0" * 32, url, '{"type": "x"}', 1, secret)
        return deliver(event, timeout_s=10, allow_private=True, verify=trusted)

    sent = attempt("localhost")
    assert (sent.status_code, sent.error) == (204, None), sent
    (request,) = receiver.at("/ok")
    assert request["headers"]["host"] == f"localhost:{receiver.port}"
    Webhook(secret).verify(request["body"], request["headers"])
    # The certificate names localhost, not 127.0.0.1: a client that checked the address it
    # connects to rather than the URL's name would accept it here.
    refused = attempt("127.0.0.1")
    assert refused.status_code is None and "certificate" in (refused.error or "").lower()
    assert len(receiver.at("/ok")) == 1


def test_webhook__outcome_is_kept_through_a_database_outage_and_recorded_after(
    pg_server: PgServer,
    database_url: str,
    db: psycopg.Connection[Any],
    receiver: Receiver,
    worker_log: Path,
) -> None:
    if not pg_server.controllable:
        pytest.skip("needs the test's own PostgreSQL (TEST_DATABASE_URL is set)")
    proc = start(database_url, worker_log, CHUNKQ_WEBHOOK_ALLOW_PRIVATE="1")
    try:
        job_id = enqueue(db, receiver.url("/slow"))
        wait_for(lambda: receiver.at("/slow"), 30, "the attempt to reach the receiver")
        db.close()
        port = int(database_url.rsplit(":", 1)[1].split("/")[0])
        pg_server.embedded.stop()
        try:
            with holding(port):
                # The attempt ends while the database is away: its outcome cannot be written,
                # and the sender goes on trying (each try logs a line) until it can.
                receiver.release.set()
                wait_for(lambda: "/slow" in receiver.finished, 30, "the answer to be sent")
                tries = worker_log.read_text().count("webhooks: database unavailable")
                wait_for(
                    lambda: worker_log.read_text().count("webhooks: database unavailable") > tries,
                    30,
                    "the sender to try again during the outage",
                    interval=0.05,
                )
        finally:
            pg_server.embedded.start()
        with psycopg.connect(database_url, autocommit=True) as again:
            event = wait_for(
                lambda: event_where(again, job_id, "delivered"),
                30,
                f"the outcome to be recorded; worker log:\n{log_tail(worker_log)}",
                interval=0.1,
            )
        assert [d["status_code"] for d in event["deliveries"]] == [204]
        assert proc.poll() is None, "the worker died during the outage"
    finally:
        receiver.release.set()
        assert stop(proc) == 0, log_tail(worker_log)
    assert len(receiver.at("/slow")) == 1


def test_retry_schedule__first_retry_within_30s_and_retries_for_at_least_a_day() -> None:
    delays = Settings().webhook_delays
    for seed in range(20):
        rng = random.Random(seed)
        waits = [retry_in(attempt, delays, rng) for attempt in range(1, len(delays) + 2)]
        assert waits[-1] is None  # the schedule is spent: the event fails
        spent = [w for w in waits if w is not None]
        assert len(spent) == len(delays) and spent[0] <= 30
        assert sum(spent) >= 24 * 3600
    assert Settings.from_env({"CHUNKQ_WEBHOOK_RETRY_S": "0.5, 2"}).webhook_delays == (0.5, 2.0)
    with pytest.raises(ValueError, match="CHUNKQ_WEBHOOK_RETRY_S"):
        Settings.from_env({"CHUNKQ_WEBHOOK_RETRY_S": "5,soon"})
