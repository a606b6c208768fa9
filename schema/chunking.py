"""Split a long text into chunks of at most ``max_chars`` code points at natural boundaries.

Each chunk ends at the best boundary that leaves it at least ``max(1, max_chars // 2)``
characters long, trying in order: a paragraph break (two or more line breaks with only
spaces between, or U+2029), a line break, a sentence end (``.``, ``!``, ``?`` or ``…`` plus
closing quotes or brackets, then whitespace; or CJK ``。！？`` with or without whitespace),
whitespace, and last a hard cut at the limit. Within a level the last boundary wins, and the
whitespace after a boundary (with any combining marks on it) stays with the chunk it ends, as
much of it as fits. The half-size floor keeps a break near the start of the window from
beating a much bigger chunk cut at a lesser boundary. No-break spaces (U+00A0, U+2007,
U+202F) are not break points.

No cut falls inside a grapheme cluster, except in a single cluster longer than ``max_chars``
(say a letter with hundreds of combining marks): there the limit wins and the cut falls
between code points.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate, repeat

import regex

_WS = r"[^\S\xa0\u2007\u202f]"
_HSPACE = r"[^\S\n\r\u2028\u2029\xa0\u2007\u202f]"
_BREAK = r"(?:\r\n|[\n\r\u2028])"
_CLOSERS = "[\"')\\]}»›”’」』）］｝〕〉》】〗〙〛]"
_MARKS = r"[\p{GCB=Extend}\p{GCB=ZWJ}\p{GCB=SpacingMark}]"

# Each level matches the text a boundary ends with; reverse mode (?r) makes search() find the
# match ending last, so one call scans back only as far as the last boundary of its level.
_PARAGRAPH = regex.compile(rf"(?r){_BREAK}{_HSPACE}*{_BREAK}|\u2029")
_BREAKS = "\n\r\u2028\u2029"
_LINE = regex.compile(rf"(?r)\r\n|[{_BREAKS}]")
_STOPS = ".!?\u2026。！？｡"
_SENTENCE = regex.compile(rf"(?r)[.!?\u2026]{_CLOSERS}*{_WS}|[。！？｡]{_CLOSERS}*")
_CLOSER_RUN = regex.compile(f"{_CLOSERS}*")
_SPACE = regex.compile(rf"(?r){_WS}")
# What follows a boundary and stays with its chunk: whitespace, and any combining marks riding
# on it (a cut before a mark would split its cluster).
_TRAIL = regex.compile(rf"(?:{_WS}|{_MARKS})*")
# Anchored at the end: a boundary plus trail that reaches a given offset begins no earlier.
_REACH = regex.compile(rf"(?r)(?:[{_STOPS}]{_CLOSERS}*)?(?:{_WS}|{_MARKS})*")
_CLUSTER = regex.compile(r"\X")

# UAX #29 always breaks between these two classes: no rule joins a left character of these
# kinds to a right one (CR is left out on the left for CR LF, L and V and T on the right for
# Hangul jamo; Extend, ZWJ, SpacingMark, Prepend and regional indicators are left out).
_SAFE_PAIR = regex.compile(
    r"[\p{GCB=Other}\p{GCB=Control}\p{GCB=LF}\p{GCB=V}\p{GCB=T}\p{GCB=LV}\p{GCB=LVT}]"
    r"[\p{GCB=Other}\p{GCB=Control}\p{GCB=CR}\p{GCB=LF}\p{GCB=LV}\p{GCB=LVT}]"
)


def split_text(text: str, max_chars: int) -> list[tuple[int, int]]:
    """Return (start, end) code-point offsets of consecutive chunks that tile `text`.

    Chunks hold 1..max_chars characters and end at the best natural boundary (module docstring).
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    if max_chars == 1:  # nothing to choose, and a window per code point costs ~10 us each
        return [(i, i + 1) for i in range(len(text))]
    spans: list[tuple[int, int]] = []
    start, size, floor = 0, len(text), max(1, max_chars // 2)
    while size - start > max_chars:
        cut = _Window(text, start, start + max_chars, start + floor).cut()
        spans.append((start, cut))
        start = cut
    if start < size:
        spans.append((start, size))
    return spans


class _Window:
    """The text from a chunk start to max_chars ahead, searched for where the chunk should end."""

    __slots__ = ("ends", "limit", "low", "start", "text")

    def __init__(self, text: str, start: int, limit: int, low: int) -> None:
        self.text, self.start, self.limit, self.low = text, start, limit, low
        self.ends: list[int] | None = None

    def cut(self) -> int:
        """Return the end of the chunk: the best boundary in [low, limit], else a hard cut."""
        text, limit = self.text, self.limit
        # Only a boundary whose trail reaches `low` gives a cut that long, so searching back to
        # where such a boundary could begin is enough; it halves the scanning on plain prose.
        pos = _REACH.match(text, self.start, self.low).start()
        # str.rfind finds the last break or full stop far faster than a reverse regex scans (about
        # 15 ns a character), so those searches start there, or are skipped when there is none.
        breaks = _after_last(text, _BREAKS, pos, limit)
        cut = self._last_cut(_PARAGRAPH, pos, breaks)
        if cut is None:
            cut = self._last_cut(_LINE, pos, breaks)
        if cut is None:
            stops = _after_last(text, _STOPS, pos, limit)
            if stops:  # room for the closing quotes and the whitespace after the stop
                stops = min(limit, _CLOSER_RUN.match(text, stops, limit).end() + 1)
            cut = self._last_cut(_SENTENCE, pos, stops)
        if cut is None:
            cut = self._last_cut(_SPACE, pos, limit)
        if cut is None:
            cut = self.snap(limit)
            if cut == self.start:
                cut = limit  # one cluster longer than max_chars: the limit wins
        return cut

    def _last_cut(self, level: regex.Pattern, pos: int, endpos: int) -> int | None:
        """Return the last cut in [low, limit] after a `level` boundary and its trail, or None."""
        text = self.text
        while match := level.search(text, pos, endpos):
            end = match.end()
            cut = self.snap(_TRAIL.match(text, end, self.limit).end())
            # Cuts only move left as the search does, so once one is too short all the rest are.
            if cut < self.low:
                return None
            if cut >= end:
                return cut
            # The boundary fell inside a cluster: every boundary in (cut, end) snaps to cut too.
            endpos = cut
        return None

    def snap(self, p: int) -> int:
        """Return the last grapheme-cluster boundary in [start, p], for start <= p <= limit."""
        text = self.text
        if p == self.start or p == len(text) or _plainly_between(text, p):
            return p
        if self.ends is None:
            # Segment with \\X from the chunk start, a known boundary, to one character past the
            # window, since whether `limit` is a boundary depends on the character after it.
            stop = min(len(text), self.limit + 1)
            sizes = map(len, _CLUSTER.findall(text, self.start, stop))
            self.ends = list(accumulate(sizes, initial=self.start))
        return self.ends[bisect_right(self.ends, p) - 1]


def _after_last(text: str, chars: str, pos: int, endpos: int) -> int:
    """Return the offset just after the last of `chars` in text[pos:endpos], or 0 if none."""
    return max(map(text.rfind, chars, repeat(pos), repeat(endpos))) + 1


def _plainly_between(text: str, p: int) -> bool:
    """True if the two characters around `p` alone show that it is a cluster boundary."""
    left, right = text[p - 1], text[p]
    # Below U+0300 every character is Other, Control, CR or LF: only CR LF holds together.
    if left < "\u0300" and right < "\u0300":
        return left != "\r" or right != "\n"
    return _SAFE_PAIR.match(text, p - 1) is not None
