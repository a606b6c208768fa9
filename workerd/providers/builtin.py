"""The offline provider: VADER sentiment, YAKE keywords and simple counts, no network.

Thread safety, checked against vaderSentiment 3.3.2 and yake 0.7.x:

- ``SentimentIntensityAnalyzer`` only reads its lexicon dicts after construction, so one
  analyzer is shared by every thread without a lock.
- ``yake.KeywordExtractor`` keeps a per-instance similarity cache and counters that
  ``extract_keywords`` mutates and clears every 50 documents. Sharing one across threads
  risks a lookup racing a ``clear()``: the KeyError would be swallowed by yake and turn
  into an empty keyword list, silently. Not reproduced under CPython's GIL, but each call
  builds its own extractor anyway, for ~0.2 ms against ~15 ms of extraction.

Neither library emits a warning on import or on analysis (checked under ``-W error``), so
no warning filter is installed here.
"""

from __future__ import annotations

import re
from typing import Any

import yake
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from workerd.providers.base import Call

MAX_KEYWORDS = 10
_DIGITS = 4
_SENTIMENT_KEYS = ("compound", "pos", "neu", "neg")

# A word is a run of letters/digits, allowing inner apostrophes (' and \u2019) and hyphens
# ("don't", "e-mail") and a decimal point or comma between digits ("3.14", "1,000");
# punctuation-only tokens such as "—" are not words.
_WORD = re.compile(r"\w+(?:(?:['\u2019-]|(?<=\d)[.,](?=\d))\w+)*")
# A sentence ends at . ! ? or … (plus closing quotes/brackets) followed by whitespace or
# the end; requiring the whitespace keeps "3.14" and "U.S.A" whole. A heuristic: "Mr. X"
# counts as two sentences.
_SENTENCE_END = re.compile(r"[.!?…]+['\"\u2019\u201d)\]]*(?=\s|$)")


def _r(value: float) -> float:
    # yake returns numpy floats; float() keeps results plain JSON numbers.
    return float(round(value, _DIGITS))


def count_words(text: str) -> int:
    """Number of words in ``text``: letter/digit runs, joined by inner ' - or a decimal point."""
    return sum(1 for _ in _WORD.finditer(text))


def count_sentences(text: str) -> int:
    """Number of sentences in ``text``: terminator-delimited pieces that contain a word."""
    return sum(1 for piece in _SENTENCE_END.split(text) if _WORD.search(piece))


class BuiltinProvider:
    """Real analysis that runs offline; safe to call ``analyze`` from many threads."""

    name = "builtin"

    def __init__(self) -> None:
        # Loading the lexicon takes ~15 ms, so it is done once per provider, not per chunk.
        self._vader = SentimentIntensityAnalyzer()

    def analyze(self, text: str, call: Call | None = None) -> dict[str, Any]:
        """Counts, sentiment and top keywords of one chunk; blank text gives zeros.

        The work is CPU-bound and short; ``call`` is checked before it starts, and the worker
        frees the slot of an attempt that outlives its deadline in any case.
        """
        if call is not None:
            call.check()
        if not text.strip():
            return {
                "chars": len(text),
                "words": 0,
                "sentences": 0,
                "sentiment": dict.fromkeys(_SENTIMENT_KEYS, 0.0),
                "keywords": [],
            }
        scores = self._vader.polarity_scores(text)
        extractor = yake.KeywordExtractor(lan="en", n=3, top=MAX_KEYWORDS)
        return {
            "chars": len(text),
            "words": count_words(text),
            "sentences": count_sentences(text),
            "sentiment": {key: _r(scores[key]) for key in _SENTIMENT_KEYS},
            # yake: lower score = more relevant; the list comes sorted best first.
            "keywords": [
                {"keyword": keyword, "score": _r(score)}
                for keyword, score in extractor.extract_keywords(text)
            ],
        }

    def summarize(self, results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
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
        key: _r(sum(length * sentiment[key] for length, sentiment in scored) / total)
        for key in _SENTIMENT_KEYS
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
        {"keyword": spelling[key], "relevance": _r(weight[key] / total), "chunks": chunks[key]}
        for key in ranked
    ]
