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

from schema.merging import MAX_KEYWORDS, SENTIMENT_KEYS, rounded, summarize_builtin
from workerd.providers.base import Call

# A word is a run of letters/digits, allowing inner apostrophes (' and \u2019) and hyphens
# ("don't", "e-mail") and a decimal point or comma between digits ("3.14", "1,000");
# punctuation-only tokens such as "—" are not words.
_WORD = re.compile(r"\w+(?:(?:['\u2019-]|(?<=\d)[.,](?=\d))\w+)*")
# A sentence ends at . ! ? or … (plus closing quotes/brackets) followed by whitespace or
# the end; requiring the whitespace keeps "3.14" and "U.S.A" whole. A heuristic: "Mr. X"
# counts as two sentences.
_SENTENCE_END = re.compile(r"[.!?…]+['\"\u2019\u201d)\]]*(?=\s|$)")


def count_words(text: str) -> int:
    """Number of words in ``text``: letter/digit runs, joined by inner ' - or a decimal point."""
    return sum(1 for _ in _WORD.finditer(text))


def count_sentences(text: str) -> int:
    """Number of sentences in ``text``: terminator-delimited pieces that contain a word."""
    return sum(1 for piece in _SENTENCE_END.split(text) if _WORD.search(piece))


class BuiltinProvider:
    """Real analysis that runs offline; safe to call ``analyze`` from many threads."""

    name = "builtin"
    # The result cache's key (workerd.providers.cache_identity): bump it when the analysis
    # of a text changes.
    cache_identity = "builtin/1"

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
                "sentiment": dict.fromkeys(SENTIMENT_KEYS, 0.0),
                "keywords": [],
            }
        scores = self._vader.polarity_scores(text)
        extractor = yake.KeywordExtractor(lan="en", n=3, top=MAX_KEYWORDS)
        return {
            "chars": len(text),
            "words": count_words(text),
            "sentences": count_sentences(text),
            "sentiment": {key: rounded(scores[key]) for key in SENTIMENT_KEYS},
            # yake: lower score = more relevant; the list comes sorted best first.
            "keywords": [
                {"keyword": keyword, "score": rounded(score)}
                for keyword, score in extractor.extract_keywords(text)
            ],
        }

    def summarize(self, results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        """Totals, length-weighted mean sentiment and merged top keywords of a document."""
        return summarize_builtin(results)
