"""Analysis providers and the factory that picks one by name (``CHUNKQ_PROVIDER``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from schema import merging
from schema.queue import Merge
from workerd.providers.base import (
    AttemptAborted,
    AttemptTimeout,
    Call,
    ContextOverflow,
    InvalidReply,
    PermanentError,
    Provider,
    ProviderError,
    ProviderUnavailable,
    RetryableError,
    cache_identity,
    can_reduce,
    circuit_key,
)

if TYPE_CHECKING:
    from workerd.providers.builtin import BuiltinProvider
    from workerd.providers.openai import OpenAIProvider
    from workerd.providers.simulated import SimulatedProvider
    from workerd.settings import Settings

__all__ = [
    "AttemptAborted",
    "AttemptTimeout",
    "BuiltinProvider",
    "Call",
    "ContextOverflow",
    "InvalidReply",
    "OpenAIProvider",
    "PermanentError",
    "Provider",
    "ProviderError",
    "ProviderUnavailable",
    "RetryableError",
    "SimulatedProvider",
    "cache_identity",
    "can_reduce",
    "circuit_key",
    "make_provider",
    "merge_by_name",
    "provider_from_settings",
]

# Name -> (module, class). Imported only when chosen: the builtin analyzer's libraries take
# seconds to import, which a worker running another provider should not pay at startup.
_FACTORIES: dict[str, tuple[str, str]] = {
    "builtin": ("workerd.providers.builtin", "BuiltinProvider"),
    "openai": ("workerd.providers.openai", "OpenAIProvider"),
    "simulated": ("workerd.providers.simulated", "SimulatedProvider"),
}
_CLASSES = {cls: module for module, cls in _FACTORIES.values()}


def __getattr__(name: str) -> Any:
    """Import a provider class on first use (``from workerd.providers import X`` still works)."""
    if name in _CLASSES:
        return getattr(importlib.import_module(_CLASSES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_provider(name: str, **options: Any) -> Provider:
    """Build the provider called ``name``, passing ``options`` to its constructor."""
    if name not in _FACTORIES:
        choices = ", ".join(sorted(_FACTORIES))
        raise ValueError(f"unknown provider {name!r}; choose one of: {choices}")
    module, cls = _FACTORIES[name]
    factory: Callable[..., Provider] = getattr(importlib.import_module(module), cls)
    return factory(**options)


def merge_by_name(default: Provider) -> Merge:
    """Each provider's merge by name (what ``schema.queue`` takes): ``default``'s own for its
    name and for results recorded without one, any other provider's from ``schema.merging``."""
    return merging.by_name(default.name, default.summarize)


def provider_from_settings(settings: Settings) -> Provider:
    """Build the provider that ``settings.provider`` names, with its options from settings."""
    options: dict[str, Any] = {}
    if settings.provider == "simulated":
        options = {
            "latency_ms": settings.sim_latency_ms,
            "fail_rate": settings.sim_fail_rate,
            "fail_pattern": settings.sim_fail_pattern,
        }
    elif settings.provider == "openai":
        from workerd.providers.prompts import load_template

        options = {
            "base_url": settings.openai_base_url,
            "api_key": settings.openai_api_key,
            "model": settings.model,
            "max_tokens": settings.max_tokens,
            "stream": settings.stream,
            "retry_after_cap_s": settings.retry_after_max_s,
            "prompt_template": load_template(settings.prompt_file, "CHUNKQ_PROMPT_FILE", "{text}"),
            "reduce_template": load_template(
                settings.reduce_prompt_file, "CHUNKQ_REDUCE_PROMPT_FILE", "{sections}"
            ),
        }
    return make_provider(settings.provider, **options)
