"""Providers: builtin analysis and merging, the simulated double, and the factory (no database)."""

from __future__ import annotations

import hashlib
import json
import math
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workerd.providers import (
    BuiltinProvider,
    PermanentError,
    Provider,
    ProviderError,
    RetryableError,
    SimulatedProvider,
    make_provider,
)

POSITIVE = (
    "What a wonderful, delightful day! The team did an excellent job and everyone is "
    "happy with the great results. I love how well this works."
)
NEGATIVE = "This is terrible. The service was awful, slow and broken, and I hate it."
TECHNICAL = (
    "PostgreSQL is a relational database. A job queue built on PostgreSQL stores jobs in "
    "tables and lets workers claim rows with SELECT FOR UPDATE SKIP LOCKED. The queue "
    "retries failed jobs with exponential backoff, and PostgreSQL keeps the queue durable."
)


@pytest.fixture(scope="module")
def builtin() -> BuiltinProvider:
    # One provider for the module: the lexicon load is the slow part and analyze is pure.
    return BuiltinProvider()


def _chunk(length: int, compound: float, pos: float, neu: float, neg: float) -> tuple:
    """A hand-made (length, result) pair with the given sentiment and no keywords."""
    result = {
        "chars": length,
        "words": length // 5,
        "sentences": 1,
        "sentiment": {"compound": compound, "pos": pos, "neu": neu, "neg": neg},
        "keywords": [],
    }
    return length, result


# --- builtin: analyze ---------------------------------------------------------------


def test_builtin__positive_text_scores_positive(builtin):
    sentiment = builtin.analyze(POSITIVE)["sentiment"]
    assert sentiment["compound"] > 0.5
    assert sentiment["pos"] > sentiment["neg"]


def test_builtin__negative_text_scores_negative(builtin):
    sentiment = builtin.analyze(NEGATIVE)["sentiment"]
    assert sentiment["compound"] < -0.5
    assert sentiment["neg"] > sentiment["pos"]


def test_builtin__keywords_are_ranked_best_first_and_capped(builtin):
    keywords = builtin.analyze(TECHNICAL)["keywords"]
    assert 0 < len(keywords) <= 10
    scores = [item["score"] for item in keywords]
    assert scores == sorted(scores)  # yake: lower score = more relevant
    assert all(type(score) is float for score in scores)  # plain floats, not numpy's
    assert any("postgresql" in item["keyword"].casefold() for item in keywords)


def test_builtin__counts_chars_words_and_sentences(builtin):
    text = "Hello world. It's 3.14 today! Is it?"
    result = builtin.analyze(text)
    assert (result["chars"], result["words"], result["sentences"]) == (len(text), 7, 3)


@pytest.mark.parametrize("text", ["", " ", "\n\t  \n"])
def test_builtin__blank_text_gives_zeros_and_no_keywords(builtin, text):
    assert builtin.analyze(text) == {
        "chars": len(text),
        "words": 0,
        "sentences": 0,
        "sentiment": {"compound": 0.0, "pos": 0.0, "neu": 0.0, "neg": 0.0},
        "keywords": [],
    }


@settings(max_examples=60, deadline=None, database=None)
@given(text=st.text(max_size=300))
def test_builtin__any_text_gives_a_json_result_with_consistent_counts(builtin, text):
    result = builtin.analyze(text)
    assert json.loads(json.dumps(result)) == result
    assert result["chars"] == len(text)
    assert 0 <= result["sentences"] <= result["words"] <= len(text)
    assert -1.0 <= result["sentiment"]["compound"] <= 1.0


def test_builtin__concurrent_analyze_matches_sequential(builtin):
    rng = random.Random(7)
    vocabulary = (POSITIVE + " " + NEGATIVE + " " + TECHNICAL).split()
    texts = [" ".join(rng.choice(vocabulary) for _ in range(150))[:1000] for _ in range(12)]
    expected = [builtin.analyze(text) for text in texts]

    threads = 8
    start = threading.Barrier(threads)

    def run(offset: int) -> list[tuple[int, dict]]:
        start.wait()  # release all threads together so their calls overlap
        order = [(offset + i) % len(texts) for i in range(len(texts))]
        return [(i, builtin.analyze(texts[i])) for i in order]

    with ThreadPoolExecutor(threads) as pool:
        outputs = list(pool.map(run, range(threads)))
    for output in outputs:
        for i, result in output:
            assert result == expected[i]


# --- builtin: summarize -------------------------------------------------------------


def test_builtin__summarize_weights_sentiment_by_chunk_length():
    summary = BuiltinProvider().summarize(
        [_chunk(900, 0.8, 0.5, 0.5, 0.0), _chunk(100, -0.6, 0.0, 0.4, 0.6)]
    )
    # (900*0.8 + 100*-0.6) / 1000 = 0.66; pos 450/1000; neu (450+40)/1000; neg 60/1000
    assert summary["sentiment"] == {"compound": 0.66, "pos": 0.45, "neu": 0.49, "neg": 0.06}
    assert (summary["chunks"], summary["chars"], summary["words"]) == (2, 1000, 200)
    assert summary["sentences"] == 2


def test_builtin__long_positive_and_short_negative_chunk_average_positive(builtin):
    long_positive, short_negative = POSITIVE * 3, NEGATIVE
    pos, neg = builtin.analyze(long_positive), builtin.analyze(short_negative)
    assert neg["sentiment"]["compound"] < 0 < pos["sentiment"]["compound"]
    summary = builtin.summarize([(len(long_positive), pos), (len(short_negative), neg)])
    total = len(long_positive) + len(short_negative)
    expected = round(
        (
            len(long_positive) * pos["sentiment"]["compound"]
            + len(short_negative) * neg["sentiment"]["compound"]
        )
        / total,
        4,
    )
    assert summary["sentiment"]["compound"] == expected > 0
    assert summary["chars"] == total


def test_builtin__summarize_leaves_wordless_chunks_out_of_sentiment():
    provider = BuiltinProvider()
    blank = (50, provider.analyze(" " * 50))
    summary = provider.summarize([_chunk(100, -0.5, 0.0, 0.5, 0.5), blank])
    assert summary["sentiment"] == {"compound": -0.5, "pos": 0.0, "neu": 0.5, "neg": 0.5}
    assert summary["chars"] == 150


def test_builtin__summarize_of_nothing_gives_zero_totals_and_null_sentiment():
    assert BuiltinProvider().summarize([]) == {
        "chunks": 0,
        "chars": 0,
        "words": 0,
        "sentences": 0,
        "sentiment": None,
        "keywords": [],
    }


def test_builtin__keywords_merge_case_insensitively_by_weighted_relevance():
    a = _chunk(100, 0.0, 0.0, 1.0, 0.0)
    a[1]["keywords"] = [{"keyword": "Python", "score": 0.0}, {"keyword": "queue", "score": 1.0}]
    b = _chunk(300, 0.0, 0.0, 1.0, 0.0)
    b[1]["keywords"] = [{"keyword": "python", "score": 1.0}, {"keyword": "Postgres", "score": 0.5}]
    # relevance = sum(length / (1 + score)) / total length (400):
    # python (100/1 + 300/2) / 400; Postgres (300/1.5) / 400; queue (100/2) / 400
    assert BuiltinProvider().summarize([a, b])["keywords"] == [
        {"keyword": "Python", "relevance": 0.625, "chunks": 2},
        {"keyword": "Postgres", "relevance": 0.5, "chunks": 1},
        {"keyword": "queue", "relevance": 0.125, "chunks": 1},
    ]


def test_builtin__merged_keywords_keep_top_ten_with_alphabetical_ties():
    length, result = _chunk(100, 0.0, 0.0, 1.0, 0.0)
    result["keywords"] = [{"keyword": f"k{i:02d}", "score": 0.5} for i in reversed(range(12))]
    merged = BuiltinProvider().summarize([(length, result)])["keywords"]
    assert [item["keyword"] for item in merged] == [f"k{i:02d}" for i in range(10)]


# --- simulated ----------------------------------------------------------------------


class _FixedRandom(random.Random):
    """A random source that always draws the same value, to probe fail_rate's edges."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_simulated__results_are_deterministic():
    text = "one two  three\nfour"
    first = SimulatedProvider().analyze(text)
    assert first == SimulatedProvider(rng=random.Random(1)).analyze(text)
    assert first == {
        "chars": len(text),
        "words": 4,
        "digest": hashlib.sha256(text.encode()).hexdigest()[:16],
    }


def test_simulated__fail_rate_fails_about_that_fraction_of_attempts():
    attempts, rate = 2000, 0.25
    provider = SimulatedProvider(fail_rate=rate, rng=random.Random(20240601))
    failures = 0
    for _ in range(attempts):
        try:
            provider.analyze("text")
        except RetryableError:
            failures += 1
    # Binomial(2000, 0.25): mean 500, sd ~19.4; a 5-sd band is wrong for <1e-6 of seeds.
    band = 5 * math.sqrt(attempts * rate * (1 - rate))
    assert abs(failures - attempts * rate) <= band


def test_simulated__fail_rate_zero_never_fails_even_on_the_lowest_draw():
    provider = SimulatedProvider(fail_rate=0.0, rng=_FixedRandom(0.0))
    for _ in range(2000):
        provider.analyze("text")


def test_simulated__fail_rate_one_always_fails_even_on_the_highest_draw():
    provider = SimulatedProvider(fail_rate=1.0, rng=_FixedRandom(math.nextafter(1.0, 0.0)))
    for _ in range(2000):
        with pytest.raises(RetryableError):
            provider.analyze("text")


def test_simulated__fails_every_attempt_matching_pattern():
    provider = SimulatedProvider(fail_pattern=r"\bPOISON\b", rng=random.Random(3))
    for _ in range(100):
        with pytest.raises(RetryableError, match="fail_pattern") as info:
            provider.analyze("this chunk holds POISON somewhere")
        assert info.value.retryable
    assert provider.analyze("this chunk is poisonous but not POISONED")["chars"] > 0


def test_simulated__empty_pattern_means_no_pattern():
    assert SimulatedProvider(fail_pattern="").analyze("anything")["chars"] == 8


def test_simulated__sleeps_latency_in_seconds_on_every_attempt():
    slept: list[float] = []
    provider = SimulatedProvider(latency_ms=250, fail_pattern="bad", sleep=slept.append)
    provider.analyze("good")
    with pytest.raises(RetryableError):
        provider.analyze("bad")
    assert slept == [0.25, 0.25]


def test_simulated__zero_latency_does_not_call_sleep():
    slept: list[float] = []
    SimulatedProvider(sleep=slept.append).analyze("text")
    assert slept == []


def test_simulated__invalid_pattern_raises_value_error():
    with pytest.raises(ValueError, match=r"fail_pattern '\(unclosed' is not a valid regex"):
        SimulatedProvider(fail_pattern="(unclosed")


@pytest.mark.parametrize(
    "options",
    [{"fail_rate": -0.1}, {"fail_rate": 1.5}, {"fail_rate": math.nan}, {"latency_ms": -1}],
)
def test_simulated__out_of_range_options_raise_value_error(options):
    with pytest.raises(ValueError):
        SimulatedProvider(**options)


def test_simulated__summarize_totals_succeeded_chunks():
    provider = SimulatedProvider()
    texts = ["a b", "c d e", ""]
    summary = provider.summarize([(len(t), provider.analyze(t)) for t in texts])
    assert summary == {"chunks": 3, "chars": 8, "words": 5}


# --- errors and factory -------------------------------------------------------------


def test_errors__retryable_and_permanent_flags_and_retry_after():
    assert issubclass(RetryableError, ProviderError)
    assert issubclass(PermanentError, ProviderError)
    assert RetryableError("x").retryable and ProviderError("x").retryable
    assert not PermanentError("x").retryable
    error = RetryableError("rate limited", retry_after=2.5)
    assert (str(error), error.retry_after) == ("rate limited", 2.5)
    assert PermanentError("bad input").retry_after is None


def test_make_provider__builds_known_providers_with_options():
    slept: list[float] = []
    simulated = make_provider("simulated", latency_ms=10, sleep=slept.append)
    simulated.analyze("x")
    assert isinstance(simulated, SimulatedProvider) and slept == [0.01]
    builtin = make_provider("builtin")
    assert isinstance(builtin, BuiltinProvider)
    assert isinstance(builtin, Provider) and isinstance(simulated, Provider)


def test_make_provider__unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown provider 'gpt'; choose one of: ") as info:
        make_provider("gpt")
    assert {"builtin", "simulated"} <= set(str(info.value).split(": ")[1].split(", "))
