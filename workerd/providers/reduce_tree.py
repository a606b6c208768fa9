"""The reduce tree: a document's chunk analyses reduced in groups that each fit one call,
then the groups' results the same way, level by level, until one analysis remains."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from schema.merging import usage_of
from workerd.providers.base import ContextOverflow
from workerd.providers.prompts import reduce_section, shorten_section

MAX_REDUCE_DEPTH = 12


class ReduceTree:
    """One reduce: the calls it made, its levels, tokens, and whether any input was shortened.

    ``ask`` turns one user message into one analysis (raising ContextOverflow when the message
    does not fit); ``template``'s ``{sections}`` is replaced by each group's sections.
    """

    def __init__(
        self, ask: Callable[[str], dict[str, Any]], template: str, budget_chars: int
    ) -> None:
        self.ask = ask
        self.template = template
        self.budget_chars = budget_chars
        self.calls = 0
        self.levels = 0
        self.truncated = False
        self.usage = usage_of({})

    def run(self, analyses: list[dict[str, Any]]) -> dict[str, Any]:
        """The document-level analysis of the ordered chunk ``analyses``, with the figures."""
        leaves = [reduce_section(a.get("index"), a.get("result") or {}) for a in analyses]
        level = leaves
        while True:
            results = [self._reduce_group(g, 0) for g in self._groups(level)]
            self.levels += 1
            if len(results) == 1:
                break
            level = [reduce_section(f"g{i}", r) for i, r in enumerate(results)]
        top = results[0]
        return {
            **top,
            "usage": self.usage,
            "chunks": len(analyses),
            "levels": self.levels,
            "calls": self.calls,
            "truncated": self.truncated,
        }

    def _groups(self, sections: list[str]) -> list[list[str]]:
        """Consecutive sections, as few groups as fit the budget (at least one per group)."""
        groups: list[list[str]] = [[]]
        size = 0
        for section in sections:
            if groups[-1] and size + len(section) > self.budget_chars:
                groups.append([])
                size = 0
            groups[-1].append(section)
            size += len(section) + 1
        return groups

    def _reduce_group(self, sections: list[str], depth: int) -> dict[str, Any]:
        """One group's analysis; a group that overflows is halved, a lone section shortened."""
        try:
            self.calls += 1
            result = self.ask(self.template.replace("{sections}", "\n".join(sections)))
            self._add(result)
            return result
        except ContextOverflow:
            if depth >= MAX_REDUCE_DEPTH:
                raise
        if len(sections) > 1:
            half = len(sections) // 2
            parts = [
                self._reduce_group(sections[:half], depth + 1),
                self._reduce_group(sections[half:], depth + 1),
            ]
            return self._reduce_group(
                [reduce_section(f"h{i}", r) for i, r in enumerate(parts)], depth + 1
            )
        self.truncated = True
        [section] = sections
        return self._reduce_group([shorten_section(section)], depth + 1)

    def _add(self, result: dict[str, Any]) -> None:
        for key, value in usage_of(result.get("usage")).items():
            self.usage[key] += value
