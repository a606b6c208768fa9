"""workerd's settings: one frozen object read from the environment in one place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from schema.cache import check_mode


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob a worker has; defaults work locally (see the README's environment table)."""

    database_url: str | None = None
    # A direct (unpooled) connection to the same database: when set, database_url goes
    # through a transaction-pooling PgBouncer, and LISTEN connects here instead.
    database_direct_url: str | None = None
    provider: str = "builtin"
    max_attempts: int = 3
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    lease_s: float = 30.0
    shutdown_grace_s: float = 25.0
    poll_interval_s: float = 5.0
    provider_concurrency: int | None = None
    sim_latency_ms: float = 0.0
    sim_fail_rate: float = 0.0
    sim_fail_pattern: str | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: str | None = None
    model: str = "gpt-4o-mini"
    max_tokens: int = 1024
    stream: bool = False
    prompt_file: str | None = None
    reduce_prompt_file: str | None = None
    attempt_timeout_s: float = 300.0
    retry_after_max_s: float = 300.0
    # The circuit: this many provider-unavailable failures in a row (across chunks, with no
    # success between) open it; while open, one probe at a time, spaced up to circuit_max_s.
    circuit_threshold: int = 3
    circuit_max_s: float = 15.0
    # Webhooks: the longest one delivery attempt may take, end to end (name lookup, connect,
    # send, the answer's status); the waits before each retry, in seconds (after the last,
    # the event is failed: about 27 h by default); deliveries in flight in this process; how
    # often the outbox is polled for due events; and whether private targets are allowed.
    webhook_timeout_s: float = 10.0
    webhook_retry_s: str = "5,300,1800,7200,18000,36000,36000"
    webhook_concurrency: int = 8
    webhook_poll_s: float = 1.0
    webhook_allow_private: bool = False
    # The result cache: on (within each tenant), shared (across tenants) or off.
    result_cache: str = "on"
    # Where this process serves its own Prometheus metrics (None: nowhere); all interfaces
    # by default, as a scraper on another host expects.
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("CHUNKQ_MAX_ATTEMPTS must be at least 1")
        if self.backoff_base_s < 0 or self.backoff_max_s < self.backoff_base_s:
            raise ValueError("need 0 <= CHUNKQ_BACKOFF_BASE_S <= CHUNKQ_BACKOFF_MAX_S")
        if self.lease_s <= 0:
            raise ValueError("CHUNKQ_LEASE_S must be positive")
        if self.shutdown_grace_s < 0:
            raise ValueError("CHUNKQ_SHUTDOWN_GRACE_S must not be negative")
        if not 0.0 <= self.sim_fail_rate <= 1.0:
            raise ValueError("CHUNKQ_SIM_FAIL_RATE must be between 0 and 1")
        if self.provider_concurrency is not None and self.provider_concurrency < 1:
            raise ValueError("CHUNKQ_PROVIDER_CONCURRENCY must be at least 1 when set")
        if self.max_tokens < 1:
            raise ValueError("CHUNKQ_MAX_TOKENS must be at least 1")
        if not self.attempt_timeout_s > 0:
            raise ValueError("CHUNKQ_ATTEMPT_TIMEOUT_S must be positive")
        if self.retry_after_max_s < 0:
            raise ValueError("CHUNKQ_RETRY_AFTER_MAX_S must not be negative")
        if self.circuit_threshold < 1:
            raise ValueError("CHUNKQ_CIRCUIT_THRESHOLD must be at least 1")
        if not self.circuit_max_s > 0:
            raise ValueError("CHUNKQ_CIRCUIT_MAX_S must be positive")
        if not self.webhook_timeout_s > 0:
            raise ValueError("CHUNKQ_WEBHOOK_TIMEOUT_S must be positive")
        if self.webhook_concurrency < 1:
            raise ValueError("CHUNKQ_WEBHOOK_CONCURRENCY must be at least 1")
        if not self.webhook_poll_s > 0:
            raise ValueError("CHUNKQ_WEBHOOK_POLL_S must be positive")
        check_mode(self.result_cache)
        if self.metrics_port is not None and not 1 <= self.metrics_port <= 65535:
            raise ValueError(f"CHUNKQ_METRICS_PORT={self.metrics_port} is not a port (1 to 65535)")
        self.webhook_delays  # noqa: B018 (a malformed schedule fails here, not at delivery)

    @property
    def webhook_delays(self) -> tuple[float, ...]:
        """CHUNKQ_WEBHOOK_RETRY_S as seconds: the wait before retry 1, 2, ..."""
        try:
            delays = tuple(float(part) for part in self.webhook_retry_s.split(",") if part.strip())
        except ValueError as exc:
            raise ValueError(
                f"CHUNKQ_WEBHOOK_RETRY_S={self.webhook_retry_s!r} is not a comma-separated"
                " list of seconds"
            ) from exc
        if any(not delay >= 0 for delay in delays):
            raise ValueError("CHUNKQ_WEBHOOK_RETRY_S must not hold a negative delay")
        return delays

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from the environment; a malformed value names its variable."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, var in ENVIRONMENT.items():
            raw = environ.get(var, "").strip()
            if not raw:
                continue
            kind = str(types[name])
            if kind == "bool":
                values[name] = _flag(var, raw)
                continue
            try:
                if "int" in kind:
                    values[name] = int(raw)
                elif "float" in kind:
                    values[name] = float(raw)
                else:
                    values[name] = raw
            except ValueError as exc:
                raise ValueError(f"{var}={raw!r} is not a valid number") from exc
        return cls(**values)


def _flag(var: str, raw: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{var}={raw!r} is not a boolean (1/0, on/off)")


# Settings field -> environment variable.
ENVIRONMENT = {
    "database_url": "DATABASE_URL",
    "database_direct_url": "DATABASE_DIRECT_URL",
    "provider": "CHUNKQ_PROVIDER",
    "max_attempts": "CHUNKQ_MAX_ATTEMPTS",
    "backoff_base_s": "CHUNKQ_BACKOFF_BASE_S",
    "backoff_max_s": "CHUNKQ_BACKOFF_MAX_S",
    "lease_s": "CHUNKQ_LEASE_S",
    "shutdown_grace_s": "CHUNKQ_SHUTDOWN_GRACE_S",
    "poll_interval_s": "CHUNKQ_POLL_INTERVAL_S",
    "provider_concurrency": "CHUNKQ_PROVIDER_CONCURRENCY",
    "sim_latency_ms": "CHUNKQ_SIM_LATENCY_MS",
    "sim_fail_rate": "CHUNKQ_SIM_FAIL_RATE",
    "sim_fail_pattern": "CHUNKQ_SIM_FAIL_PATTERN",
    "openai_base_url": "OPENAI_BASE_URL",
    "openai_api_key": "OPENAI_API_KEY",
    "model": "CHUNKQ_MODEL",
    "max_tokens": "CHUNKQ_MAX_TOKENS",
    "stream": "CHUNKQ_STREAM",
    "prompt_file": "CHUNKQ_PROMPT_FILE",
    "reduce_prompt_file": "CHUNKQ_REDUCE_PROMPT_FILE",
    "attempt_timeout_s": "CHUNKQ_ATTEMPT_TIMEOUT_S",
    "retry_after_max_s": "CHUNKQ_RETRY_AFTER_MAX_S",
    "circuit_threshold": "CHUNKQ_CIRCUIT_THRESHOLD",
    "circuit_max_s": "CHUNKQ_CIRCUIT_MAX_S",
    "webhook_timeout_s": "CHUNKQ_WEBHOOK_TIMEOUT_S",
    "webhook_retry_s": "CHUNKQ_WEBHOOK_RETRY_S",
    "webhook_concurrency": "CHUNKQ_WEBHOOK_CONCURRENCY",
    "webhook_poll_s": "CHUNKQ_WEBHOOK_POLL_S",
    "webhook_allow_private": "CHUNKQ_WEBHOOK_ALLOW_PRIVATE",
    "result_cache": "CHUNKQ_RESULT_CACHE",
    "metrics_port": "CHUNKQ_METRICS_PORT",
    "metrics_host": "CHUNKQ_METRICS_HOST",
}
