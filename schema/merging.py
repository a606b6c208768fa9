"""Each provider's merge: a job's chunk results into its summary, and a split chunk's pieces
into one result.

Pure functions of results, kept below both services: the worker merges when it finalizes a
job, the API when it cancels one. Each result is merged by the provider that produced it
(``chunks.provider``), looked up here by name.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from schema.queue.outcomes import Merge, Summarize

# The labels a model's analysis carries (its JSON Schema's enum, see workerd.providers.replies).
SENTIMENTS = ("positive", "negative", "neutral", "mixed")
SUMMARY_KEY_POINTS = 20
# The builtin analyzer's keywords per chunk and per document, its sentiment fields, and the
# digits its numbers keep.
MAX_KEYWORDS = 10
SENTIMENT_KEYS = ("compound", "pos", "neu", "neg")
_DIGITS = 4


def by_name(default: str, own: Summarize | None = None) -> Merge:
    """The Merge ``schema.queue`` takes: each result merged by its own provider's merge, and
    results recorded without a provider name by ``default``'s. ``own``, when given, is
    ``default``'s merge (a provider passed in as an object). An unknown name raises
    ValueError, which the job's summary reports."""

    def merge(name: str | None) -> Summarize:
        name = name or default
        if name == default and own is not None:
            return own
        if name not in MERGES:
            known = ", ".join(sorted(MERGES))
            raise ValueError(f"no merge for provider {name!r}; known: {known}")
        return MERGES[name]

    return merge


def rounded(value: float) -> float:
    """``value`` to the builtin analyzer's digits, as a plain float (yake returns numpy's)."""
    return float(round(value, _DIGITS))


# --- simulated: counts --------------------------------------------------------------------


def summarize_counts(results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Chunk count and total chars and words of the succeeded chunks."""
    return {
        "chunks": len(results),
        "chars": sum(result["chars"] for _, result in results),
        "words": sum(result["words"] for _, result in results),
    }


# --- builtin: VADER sentiment and YAKE keywords -------------------------------------------


def summarize_builtin(results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Totals, length-weighted mean sentiment and merged top keywords of a document."""
    return {
        "chunks": len(results),
        "chars": sum(result["chars"] for _, result in results),
        "words": sum(result["words"] for _, result in results),
        "sentences": sum(result["sentences"] for _, result in results),
        "sentiment": _mean_sentiment(results),
        "keywords": _merge_keywords(results),
    }


def _mean_sentiment(results: list[tuple[int, dict[str, Any]]]) -> dict[str, float] | None:
    """Each sentiment field averaged over chunks, weighted by chunk length; None if no words.

    Chunks without words are left out: their all-zero scores (even ``neu``) are not a
    measurement, and counting them would pull every mean towards 0.
    """
    scored = [(length, result["sentiment"]) for length, result in results if result["words"]]
    total = sum(length for length, _ in scored)
    if total <= 0:
        return None
    return {
        key: rounded(sum(length * sentiment[key] for length, sentiment in scored) / total)
        for key in SENTIMENT_KEYS
    }


def _merge_keywords(results: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The document's top keywords, merged case-insensitively across chunks.

    A keyword's relevance in a chunk is ``1 / (1 + yake score)`` (in (0, 1], higher is
    better); its document relevance is the length-weighted mean of that over all chunks,
    counting 0 where it is absent. So a keyword that is strong in long chunks, or present
    in many, ranks first. Ties break alphabetically so the order is deterministic; the
    spelling shown is the first one met in document order.
    """
    total = sum(length for length, _ in results)
    if total <= 0:
        return []
    weight: dict[str, float] = {}
    spelling: dict[str, str] = {}
    chunks: dict[str, int] = {}
    for length, result in results:
        # Within one chunk keep the best score per key, so case variants are not counted twice.
        best: dict[str, float] = {}
        for item in result["keywords"]:
            key = " ".join(item["keyword"].casefold().split())
            spelling.setdefault(key, item["keyword"])
            best[key] = min(best.get(key, item["score"]), item["score"])
        for key, score in best.items():
            weight[key] = weight.get(key, 0.0) + length / (1.0 + score)
            chunks[key] = chunks.get(key, 0) + 1
    ranked = sorted(weight, key=lambda key: (-weight[key], key))[:MAX_KEYWORDS]
    return [
        {"keyword": spelling[key], "relevance": rounded(weight[key] / total), "chunks": chunks[key]}
        for key in ranked
    ]


# --- a model's analyses (openai) ------------------------------------------------------------


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


def summarize_analyses(results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
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
    """Token counts added up over replies."""
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


MERGES: dict[str, Summarize] = {
    "builtin": summarize_builtin,
    "openai": summarize_analyses,
    "simulated": summarize_counts,
}
