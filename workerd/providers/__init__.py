"""Analysis providers and the factory that picks one by name (``CHUNKQ_PROVIDER``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workerd.providers.base import PermanentError, Provider, ProviderError, RetryableError
from workerd.providers.builtin import BuiltinProvider
from workerd.providers.simulated import SimulatedProvider

if TYPE_CHECKING:
    from workerd.settings import Settings

__all__ = [
    "BuiltinProvider",
    "PermanentError",
    "Provider",
    "ProviderError",
    "RetryableError",
    "SimulatedProvider",
    "make_provider",
    "provider_from_settings",
]

# Name -> constructor. The "openai" provider goes here when it exists.
_FACTORIES: dict[str, Callable[..., Provider]] = {
    "builtin": BuiltinProvider,
    "simulated": SimulatedProvider,
}


def make_provider(name: str, **options: Any) -> Provider:
    """Build the provider called ``name``, passing ``options`` to its constructor."""
    factory = _FACTORIES.get(name)
    if factory is None:
        choices = ", ".join(sorted(_FACTORIES))
        raise ValueError(f"unknown provider {name!r}; choose one of: {choices}")
    return factory(**options)


def provider_from_settings(settings: Settings) -> Provider:
    """Build the provider that ``settings.provider`` names, with its options from settings."""
    options: dict[str, Any] = {}
    if settings.provider == "simulated":
        options = {
            "latency_ms": settings.sim_latency_ms,
            "fail_rate": settings.sim_fail_rate,
            "fail_pattern": settings.sim_fail_pattern,
        }
    return make_provider(settings.provider, **options)
