"""Tests for the chunker: tiling, boundary preference, grapheme clusters, offsets, linear work."""

import random
from bisect import bisect_right
from itertools import pairwise

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from schema import chunking
from schema.chunking import _WS_CHARS, split_text

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # 7 code points, 1 cluster
FLAGS = "\U0001f1fa\U0001f1f8\U0001f1ec\U0001f1e7\U0001f1eb\U0001f1f7"  # US, GB, FR

# Pieces that stress the boundary rules and the grapheme-cluster rules of UAX #29.
TRICKY = [
    "a",
    "Word",
    " ",
    "  ",
    "\t",
    "\n",
    "\n\n",
    "\r",
    "\r\n",
    "\r\n\r\n",
    "\u2028",
    "\u2029",
    "\xa0",
    ".",
    "!",
    "?",
    "…",
    "。",
    "！",
    '"',
    "”",
    ")",
    "」",
    "e\u0301",
    "\u0301",
    "\u0903",
    "\u200d",
    FAMILY,
    "\U0001f468",
    FLAGS[:2],
    FLAGS[:1],
    "한",
    "\u1100",
    "\u1161",
    "\u11a8",
    "\u0915\u094d\u0937",
    "\u094d",
    "\u0600",
    "3.14",
    "é" * 3,
    "汉字",
]

texts = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=400),
    st.lists(st.sampled_from(TRICKY), max_size=150).map("".join),
    st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=5)), max_size=100).map("".join),
)


def pieces(text, max_chars):
    return [text[start:end] for start, end in split_text(text, max_chars)]


def clusters(text):
    """(start, end) of every grapheme cluster, by \\X over the whole text (the slow truth)."""
    return [match.span() for match in regex.finditer(r"\X", text)]


@settings(max_examples=400, deadline=None)
@given(text=texts, max_chars=st.integers(1, 200))
def test_split__tiles_text_in_nonempty_chunks_within_limit(text, max_chars):
    spans = split_text(text, max_chars)
    if not text:
        assert spans == []
        return
    assert spans[0][0] == 0
    assert spans[-1][1] == len(text)
    for (_, end), (start, _) in pairwise(spans):
        assert start == end
    assert all(1 <= end - start <= max_chars for start, end in spans)
    assert "".join(text[start:end] for start, end in spans) == text


@settings(max_examples=400, deadline=None)
@given(text=texts, max_chars=st.integers(1, 200))
def test_split__cuts_only_between_clusters_unless_cluster_exceeds_limit(text, max_chars):
    owner = {}  # offset inside a cluster -> that cluster's length
    for start, end in clusters(text):
        for inside in range(start + 1, end):
            owner[inside] = end - start
    for _, cut in split_text(text, max_chars)[:-1]:
        assert owner.get(cut, 0) == 0 or owner[cut] > max_chars, f"cut at {cut} splits a cluster"


@settings(max_examples=400, deadline=None)
@given(text=texts, max_chars=st.integers(1, 200))
def test_split__short_chunk_only_before_a_cluster_that_would_overflow(text, max_chars):
    # A chunk under half the limit (other than the last) is only allowed when the cluster after
    # it would not have fitted: every boundary level insists on at least max_chars // 2.
    spans = clusters(text)
    starts = [start for start, _ in spans]
    for start, cut in split_text(text, max_chars)[:-1]:
        if cut - start < max(1, max_chars // 2):
            _, cluster_end = spans[bisect_right(starts, cut) - 1]  # the cluster holding `cut`
            assert cluster_end > start + max_chars


# The module docstring's rule, restated the slow and obvious way: try every cut in the window.
# Each pattern, in reverse mode, is anchored at the end of the text it is matched against.
WS = r"[^\S\xa0\u2007\u202f]"
CLOSERS = "[\"')\\]}»›”’」』）］｝〕〉》】〗〙〛]"
LEVEL_ENDINGS = [
    regex.compile(
        r"(?r)(?:\r\n|[\n\r\u2028])[^\S\n\r\u2028\u2029\xa0\u2007\u202f]*"
        r"(?:\r\n|[\n\r\u2028])|\u2029"
    ),
    regex.compile(r"(?r)\r\n|[\n\r\u2028\u2029]"),
    regex.compile(rf"(?r)[.!?…]{CLOSERS}*{WS}|[。！？｡]{CLOSERS}*"),
    regex.compile(rf"(?r){WS}"),
]
TRAIL = regex.compile(rf"(?:{WS}|[\p{{GCB=Extend}}\p{{GCB=ZWJ}}\p{{GCB=SpacingMark}}])*")


def reference_split(text, max_chars):
    spans, start, floor = [], 0, max(1, max_chars // 2)
    while len(text) - start > max_chars:
        limit = start + max_chars
        bounds = [start] + [m.end() for m in regex.finditer(r"\X", text, pos=start)]
        for ending in LEVEL_ENDINGS:
            cuts = []
            for end in range(start + 1, limit + 1):
                if ending.match(text, start, end):
                    trail = TRAIL.match(text, end, limit).end()
                    cut = max(b for b in bounds if b <= trail)
                    if cut >= max(end, start + floor):  # not inside the ending, not too short
                        cuts.append(cut)
            if cuts:
                cut = max(cuts)
                break
        else:
            cut = max(b for b in bounds if b <= limit)
            cut = limit if cut == start else cut
        spans.append((start, cut))
        start = cut
    return [*spans, (start, len(text))] if start < len(text) else spans


@settings(max_examples=300, deadline=None)
@given(text=texts, max_chars=st.integers(1, 60))
def test_split__matches_slow_reference(text, max_chars):
    assert split_text(text, max_chars) == reference_split(text, max_chars)


def test_split__prefers_paragraph_break():
    text = "First paragraph has words.\n\nSecond line here.\nThird part. More words follow"
    assert pieces(text, 50)[0] == "First paragraph has words.\n\n"


def test_split__prefers_line_break_over_later_sentence_end():
    text = "One line of text here\nNext sentence. And more words here to pad it out"
    assert pieces(text, 40)[0] == "One line of text here\n"


def test_split__treats_unicode_separators_as_line_breaks():
    text = "line one\u2028line two\u2029line three"
    assert pieces(text, 12) == ["line one\u2028", "line two\u2029", "line three"]


def test_split__prefers_sentence_end_over_later_whitespace():
    text = "This is one sentence. Then a clause without end and more"
    assert pieces(text, 40) == ["This is one sentence. ", "Then a clause without end and more"]


def test_split__takes_last_sentence_end_that_fits():
    assert pieces("A. B. C. D. E. F. G. H. I. J.", 13) == ["A. B. C. D. ", "E. F. G. H. ", "I. J."]


def test_split__sentence_end_includes_closing_quotes():
    text = 'He said "Stop." Then he left and walked home'
    assert pieces(text, 24)[0] == 'He said "Stop." '
    assert pieces("Wait… what? “Really!” she said. Yes", 20)[:2] == [
        "Wait… what? ",
        "“Really!” she said. ",
    ]


def test_split__cjk_sentence_end_needs_no_space():
    assert pieces("这是第一句。这是第二句。这是第三句。", 8) == [
        "这是第一句。",
        "这是第二句。",
        "这是第三句。",
    ]


def test_split__decimal_point_is_not_a_sentence_end():
    assert pieces("Pi is 3.14159 and e is 2.71828 roughly", 12)[0] == "Pi is "


def test_split__falls_back_to_whitespace():
    text = "alpha beta gamma delta epsilon zeta eta theta"
    assert pieces(text, 20) == ["alpha beta gamma ", "delta epsilon zeta ", "eta theta"]


def test_split__no_break_space_is_not_a_break():
    assert pieces("aaaa\xa0bbbbbbbbbbbbb", 10) == ["aaaa\xa0bbbbb", "bbbbbbbb"]


def test_split__hard_cut_without_boundaries():
    assert pieces("x" * 50, 20) == ["x" * 20, "x" * 20, "x" * 10]


def test_split__skips_boundary_that_leaves_tiny_chunk():
    text = "Hi.\n\nThis is a much longer paragraph that goes on"
    assert pieces(text, 40) == ["Hi.\n\nThis is a much longer paragraph ", "that goes on"]


def test_split__whitespace_after_boundary_stays_with_chunk():
    assert pieces("Sentence one.   \n\n\n   Next part of the text", 24) == [
        "Sentence one.   \n\n\n   ",
        "Next part of the text",
    ]


def test_split__combining_mark_on_whitespace_stays_with_chunk():
    text = "alpha beta \u0301gamma delta"
    assert pieces(text, 14)[0] == "alpha beta \u0301"


def test_split__boundary_at_exactly_half_the_limit_counts():
    text = "一二三四五六七八九。十一二三四五六七八九十一二"
    assert pieces(text, 20)[0] == "一二三四五六七八九。"


def test_split__never_splits_crlf():
    assert pieces("abc\r\ndef", 4) == ["abc", "\r\n", "def"]
    for max_chars in range(2, 12):
        for piece in pieces("ab\r\n" * 40 + "\r\n" * 40, max_chars):
            assert not piece.startswith("\n")


def test_split__keeps_emoji_zwj_family_whole():
    assert pieces("xxxxx" + FAMILY + "yyyyy", 8) == ["xxxxx", FAMILY + "y", "yyyy"]


def test_split__keeps_combining_marks_with_their_letter():
    assert pieces("e\u0301" * 10, 5) == ["e\u0301e\u0301"] * 5


def test_split__keeps_flags_whole():
    assert pieces(FLAGS, 3) == [FLAGS[0:2], FLAGS[2:4], FLAGS[4:6]]


def test_split__keeps_hangul_jamo_syllable_whole():
    assert pieces("\u1100\u1161\u11a8" * 5, 4) == ["\u1100\u1161\u11a8"] * 5


def test_split__cuts_cluster_longer_than_limit_at_code_points():
    text = "a" + "\u0301" * 30
    assert [len(piece) for piece in pieces(text, 10)] == [10, 10, 10, 1]


def test_split__repeated_paragraphs_get_their_own_offsets():
    paragraph = "The same paragraph again. It repeats exactly, word for word.\n\n"
    size = len(paragraph)
    spans = split_text(paragraph * 200, size + 10)
    assert spans == [(i * size, (i + 1) * size) for i in range(200)]


REPEATED = "Same words. Same words again!\nAnd once more, the same words.\n\n"


def test_split__repeated_paragraph_pieces_have_their_own_offsets():
    # Identical pieces recur 100 times: offsets found by searching for a piece's content would
    # all point at the first copy.
    text = REPEATED * 100
    spans = split_text(text, 33)
    halves = ["Same words. Same words again!\n", "And once more, the same words.\n\n"]
    assert [text[start:end] for start, end in spans] == halves * 100
    assert [start for start, _ in spans] == [i * 62 + half for i in range(100) for half in (0, 30)]


@pytest.mark.parametrize("max_chars", [1, 7, 16, 25, 40, 61, 62, 200])
def test_split__repeated_text_offsets_increase_and_tile(max_chars):
    text = REPEATED * 100
    spans = split_text(text, max_chars)
    assert all(a < b for (a, _), (b, _) in pairwise(spans))
    assert all(end == start for (_, end), (start, _) in pairwise(spans))
    assert "".join(text[start:end] for start, end in spans) == text


@pytest.mark.parametrize("max_chars", [8, 16, 33, 62, 70])
def test_split__repeated_paragraphs_split_alike(max_chars):
    # With these limits every paragraph ends a chunk, so each copy splits like the first.
    size = len(REPEATED)
    spans = split_text(REPEATED * 100, max_chars)
    first = [(start, end) for start, end in spans if end <= size]
    assert first[-1][1] == size
    assert spans == [(s + i * size, e + i * size) for i in range(100) for s, e in first]


def test_split__empty_text():
    assert split_text("", 10) == []


def test_split__text_shorter_than_limit_is_one_chunk():
    assert split_text("short", 10) == [(0, 5)]


def test_split__text_exactly_at_limit_is_one_chunk():
    assert split_text("x" * 10, 10) == [(0, 10)]
    assert split_text("x" * 11, 10) == [(0, 10), (10, 11)]


def test_split__max_chars_one_gives_code_points():
    assert pieces("ab c", 1) == ["a", "b", " ", "c"]
    assert pieces("\r\n", 1) == ["\r", "\n"]  # the limit beats the CR LF cluster


@pytest.mark.parametrize("max_chars", [0, -1])
def test_split__rejects_limit_below_one(max_chars):
    with pytest.raises(ValueError):
        split_text("text", max_chars)


def test_split__characters_below_u0300_always_break_between_each_other():
    # The fast path cuts between two such characters (bar CR LF) without running \X.
    simple = regex.compile(r"[\p{GCB=Other}\p{GCB=Control}\p{GCB=CR}\p{GCB=LF}]")
    assert all(simple.match(chr(code)) for code in range(0x300))


@pytest.mark.parametrize(
    "text",
    [
        "x" * 1_000_000,
        "\n" * 1_000_000,
        "\r\n" * 500_000,
        " " * 1_000_000,
        "." * 1_000_000,
        "e" + "\u0301" * 1_000_000,
    ],
    ids=["no-boundaries", "newlines", "crlf", "spaces", "dots", "one-huge-cluster"],
)
def test_split__is_linear_on_pathological_text(text, monkeypatch):
    # Linear, counted rather than timed: every regex scan covers at
    # most one window of max_chars (+1 for the character after it), and each chunk costs a
    # bounded number of them, so the work is O(len(text)) whatever the text. A scan from the
    # text's start, an unbounded one, or a per-chunk loop over earlier boundaries fails here
    # on any machine, however fast.
    from schema import chunking

    scans: list[tuple[str, int, int | None]] = []

    class Counted:
        def __init__(self, name, pattern):
            self.name, self.pattern = name, pattern

        def __getattr__(self, method):
            def call(string, *bounds):
                scans.append((self.name, *bounds, None)[:3])
                return getattr(self.pattern, method)(string, *bounds)

            return call

    for name, value in vars(chunking).items():
        if isinstance(value, regex.Pattern):
            monkeypatch.setattr(chunking, name, Counted(name, value))
    max_chars = 1000
    spans = split_text(text, max_chars)
    assert spans[-1][1] == len(text)
    assert scans, "the counting did not see the chunker's scans"
    unbounded = {name for name, _pos, end in scans if end is None}
    assert unbounded <= {"_SAFE_PAIR"}  # the two-character check around one offset
    widest = max(end - pos for _name, pos, end in scans if end is not None)
    assert widest <= max_chars + 1
    assert len(scans) <= 12 * len(spans)


# The fast path: cluster boundaries are worked out only around candidate cuts, from the last
# pair of characters that plainly has a boundary between them. These texts make that the
# common case, and each is checked against \X over the whole text and the slow reference.
ZALGO_MARKS = [chr(code) for code in range(0x300, 0x370)]


def _zalgo(text, seed, most=3):
    rng = random.Random(seed)
    return "".join(ch + "".join(rng.choices(ZALGO_MARKS, k=rng.randint(1, most))) for ch in text)


FAST_PATH_TEXTS = {
    "combining-marks": _zalgo(
        "Every letter carries marks. Even spaces do!\n\nA new paragraph." * 6, 1
    ),
    "marks-no-whitespace": _zalgo("abcdefghij" * 40, 2),
    "no-whitespace": "".join(random.Random(3).choices("abcdefghijklmnopqrstuvwxyz", k=900)),
    "long-clusters": ("a" + "\u0301" * 37 + " ") * 25,
    "crlf": "First line.\r\nSecond line\r\n\r\nNew paragraph, \r\nmore words.\r\n" * 15,
    "lone-crs": "cr\rcr\r\rlf\n\r\n" * 60,
    "emoji-zwj": (FAMILY + "\U0001f44d\U0001f3fd" + FLAGS + "\u2764\ufe0f\u200d\U0001f525 ") * 30,
    "devanagari": "क्षत्रिय पुस्तकालय। " * 40,
    "hangul-jamo": ("\u1100\u1161\u11a8\u1102\u1165 " + "한국어 ") * 60,
    "prepend": ("\u0600\u0661\u0662 \u06dd\u0663 " + "x\u0600" * 5) * 30,
}


def _assert_cuts_between_clusters(text, spans, max_chars):
    assert "".join(text[start:end] for start, end in spans) == text
    assert all(end == start for (_, end), (start, _) in pairwise(spans))
    assert all(1 <= end - start <= max_chars for start, end in spans)
    inside = {}
    for start, end in clusters(text):
        for offset in range(start + 1, end):
            inside[offset] = end - start
    for _, cut in spans[:-1]:
        assert cut not in inside or inside[cut] > max_chars, f"cut at {cut} splits a cluster"


@pytest.mark.parametrize("max_chars", [2, 7, 19, 40, 64, 150])
@pytest.mark.parametrize("name", sorted(FAST_PATH_TEXTS))
def test_split__fast_path_tiles_and_keeps_clusters_whole(name, max_chars):
    text = FAST_PATH_TEXTS[name]
    spans = split_text(text, max_chars)
    _assert_cuts_between_clusters(text, spans, max_chars)
    assert spans == reference_split(text, max_chars)


def test_split__long_cluster_stays_whole_when_it_fits_and_is_cut_when_it_does_not():
    cluster = "a" + "\u0301" * 37  # 38 code points, one cluster
    text = (cluster + " ") * 10
    assert all(text[s:e].strip(" ") == cluster for s, e in split_text(text, 40))
    assert [e - s for s, e in split_text(cluster * 2, 30)] == [30, 8, 30, 8]


def test_split__emoji_zwj_sequences_are_never_cut():
    text = FAMILY * 50  # 7 code points per cluster, no whitespace at all
    spans = split_text(text, 20)
    assert all((end - start) % len(FAMILY) == 0 for start, end in spans)
    assert spans == reference_split(text, 20)


def test_split__crlf_is_one_line_break_and_never_split():
    text = "abc\r\ndef\r\n" * 30
    for max_chars in range(2, 16):
        spans = split_text(text, max_chars)
        assert all(text[end - 1 : end + 1] != "\r\n" for _, end in spans[:-1])
        assert spans == reference_split(text, max_chars)


marked_texts = st.lists(
    st.tuples(
        st.sampled_from(
            ["a", "b", " ", "\n", ".", "!", "\r", "\r\n", "क", "\u094d", "\u1100", "🇺"]
        ),
        st.lists(st.sampled_from([*ZALGO_MARKS, "\u200d", "\u0903", "\u093f"]), max_size=6),
    ).map(lambda pair: pair[0] + "".join(pair[1])),
    max_size=120,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=marked_texts, max_chars=st.integers(1, 60))
def test_split__mark_heavy_text_matches_slow_reference(text, max_chars):
    assert split_text(text, max_chars) == reference_split(text, max_chars)


# One character of every combination of the properties that decide cluster boundaries
# (Grapheme_Cluster_Break, Indic_Conjunct_Break, Extended_Pictographic), a few of each.
PROPERTIES = [
    *(
        rf"\p{{GCB={value}}}"
        for value in (
            "Other",
            "Control",
            "CR",
            "LF",
            "Extend",
            "ZWJ",
            "SpacingMark",
            "Prepend",
            "L",
            "V",
            "T",
            "LV",
            "LVT",
            "RI",
        )
    ),
    *(rf"\p{{InCB={value}}}" for value in ("Consonant", "Extend", "Linker")),
    r"\p{ExtPict}",
]


EVERYTHING = "".join(chr(code) for code in range(0x110000) if not 0xD800 <= code < 0xE000)


def _representatives(per_class):
    tests = [regex.compile(prop) for prop in PROPERTIES]
    # Most characters are plain GCB=Other; classify those that have some other property.
    special = regex.compile("[" + "".join(PROPERTIES[1:]) + "]")
    found = {}
    for ch in ["a", *special.findall(EVERYTHING)]:
        chars = found.setdefault(tuple(bool(test.match(ch)) for test in tests), [])
        if len(chars) < per_class:
            chars.append(ch)
    return [ch for chars in found.values() for ch in chars]


def test_plain_pairs__are_boundaries_whatever_precedes_them():
    # The fast path trusts _SAFE_PAIR without looking further left: check it against \X with
    # every one-character context, and for one character per class every two-character one.
    every, one = _representatives(2), _representatives(1)
    short = ["", *every]
    longer = [*short, *(a + b for a in one for b in one)]
    for left in every:
        for right in every:
            if not chunking._SAFE_PAIR.fullmatch(left + right):
                continue
            for context in longer if left in one and right in one else short:
                text = context + left + right
                ends = {match.end() for match in regex.finditer(r"\X", text)}
                assert len(text) - 1 in ends, f"{text!r}: no boundary before {right!r}"


def test_plain_pairs__cover_the_common_scripts():
    # The fast path only helps if ordinary neighbours count as plain boundaries.
    for pair in [
        "\u0301a",
        "a\u0915",
        "\u093f ",
        "\U0001f466\U0001f468",
        "\u11a8\u1100",
        "\u0301\n",
    ]:
        assert chunking._SAFE_PAIR.fullmatch(pair), pair
    for pair in ["a\u0301", "\u200d\U0001f468", "\u094d\u0915", "\U0001f1fa\U0001f1f8", "\r\n"]:
        assert not chunking._SAFE_PAIR.fullmatch(pair), pair


def test_fast_checks__character_tables_match_the_regular_expressions():
    everything = EVERYTHING
    # _WS_CHARS lists every character _WS matches; none lies above U+3000.
    assert set(_WS_CHARS) == set(regex.findall(chunking._WS, everything))
    # An ASCII character after anything below U+0600 is a boundary: no Prepend lies there.
    assert regex.search(r"\p{GCB=Prepend}", everything[:0x600]) is None
    assert not regex.search(r"[\p{ExtPict}\p{InCB=Consonant}\p{GCB=Extend}]", everything[:0x80])


def test_split__keeps_a_linker_and_the_consonant_after_it_whole():
    # `regex` joins U+1CF5 (GCB=Other, InCB=Linker) to a following consonant: a pair test by
    # GCB classes alone took that for a boundary and cut inside the cluster.
    text = "xxxx\u1cf5\u0915yyyy"
    assert split_text(text, 5) == [(0, 4), (4, 9), (9, 10)]
