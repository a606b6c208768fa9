"""Merging model analyses: the pieces of a split chunk into one, and a document's chunks into
its summary (length-weighted sentiment, first distinct key points, token totals)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from workerd.providers.replies import SENTIMENTS

SUMMARY_KEY_POINTS = 20


def combine(pieces: list[dict[str, Any]]) -> dict[str, Any]:
    """One chunk result from its consecutive pieces (``{"start", "end", **result}``), which
    it lists in ``parts``."""
    sentiment = merge_sentiment([(p["end"] - p["start"], p) for p in pieces])
    reasons = [p.get("finish_reason") for p in pieces]
    return {
        "summary": " ".join(p["summary"] for p in pieces),
        "sentiment": sentiment["label"] if sentiment else "neutral",
        "sentiment_score": sentiment["score"] if sentiment else 0.0,
        "key_points": [k for p in pieces for k in p["key_points"]],
        "model": pieces[0].get("model"),
        "finish_reason": next((x for x in reasons if x != "stop"), reasons[0]),
        "usage": sum_usage([p.get("usage") or {} for p in pieces]),
        "parts": pieces,
    }


def summarize(results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Chunk count, length-weighted sentiment, first key points, token totals, summaries."""
    results = [(n, r) for n, r in results if isinstance(r, dict)]
    points = [r.get("key_points") for _, r in results]
    return {
        "chunks": len(results),
        "sentiment": merge_sentiment(results),
        "key_points": dedupe(
            [p for ps in points if isinstance(ps, list) for p in ps], SUMMARY_KEY_POINTS
        ),
        "usage": sum_usage([r.get("usage") or {} for _, r in results]),
        "summaries": [r.get("summary", "") for _, r in results],
        "split_chunks": sum(1 for _, r in results if r.get("parts")),
    }


def merge_sentiment(results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any] | None:
    """Length-weighted mean score and the label most results carry; None if nothing to merge.

    A tie for most results between positive and negative (or involving mixed) is "mixed";
    any other tie goes to the label covering more text.
    """
    scored = [
        (max(n, 0), r["sentiment"], _number(r.get("sentiment_score")))
        for n, r in results
        if r.get("sentiment") in SENTIMENTS
    ]
    if not scored:
        return None
    total = sum(n for n, _, _ in scored)
    if total > 0:
        score = sum(n * s for n, _, s in scored) / total
    else:
        score = sum(s for _, _, s in scored) / len(scored)
    counts = Counter(label for _, label, _ in scored)
    length = Counter[str]()
    for n, label, _ in scored:
        length[label] += n
    most = max(counts.values())
    top = {x for x in counts if counts[x] == most}
    if len(top) > 1 and ("mixed" in top or {"positive", "negative"} <= top):
        label = "mixed"
    else:
        label = max(top, key=lambda x: (length[x], -SENTIMENTS.index(x)))
    return {"label": label, "score": round(score, 4), "labels": dict(counts)}


def usage_of(usage: Any) -> dict[str, int]:
    """Token counts from a reply's ``usage`` (0 for what it lacks)."""
    usage = usage if isinstance(usage, dict) else {}

    def count(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    prompt, completion = count("prompt_tokens"), count("completion_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": count("total_tokens") or prompt + completion,
    }


def sum_usage(usages: list[Any]) -> dict[str, int]:
    parts = [usage_of(u) for u in usages]
    return {key: sum(u[key] for u in parts) for key in usage_of({})}


def dedupe(points: list[Any], limit: int) -> list[str]:
    """The first ``limit`` distinct points, compared without case or extra whitespace."""
    seen: set[str] = set()
    kept: list[str] = []
    for point in points:
        if not isinstance(point, str):
            continue
        key = " ".join(point.casefold().split())
        if key and key not in seen:
            seen.add(key)
            kept.append(point)
            if len(kept) == limit:
                break
    return kept


def _number(value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok and abs(value) != float("inf") and value == value else 0.0
