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
_CLOSER_CHARS = "\"')]}»›”’」』）］｝〕〉》】〗〙〛"
_CLOSERS = f"[{regex.escape(_CLOSER_CHARS)}]"
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
# The characters _WS matches (none lies above U+3000), for membership tests without a regex.
_WS_CHARS = "".join(ch for ch in map(chr, range(0x3001)) if regex.match(_WS, ch))

# Two characters around a cut that alone show it is a grapheme-cluster boundary, whatever comes
# before them (UAX #29 as the `regex` module's \X applies it; a test checks every pair of
# property classes in context). Left out, because they look further left: emoji ZWJ sequences
# (ZWJ before a pictograph), Indic conjuncts (a linker or extender before a consonant: `regex`
# joins those even with no consonant before the linker), and runs of regional indicators.
_JOINER = r"\p{GCB=Extend}\p{GCB=ZWJ}\p{GCB=SpacingMark}"
_HANGUL = r"\p{GCB=L}\p{GCB=V}\p{GCB=T}\p{GCB=LV}\p{GCB=LVT}"
# What may end a cluster when a cluster-starting character follows.
_LEFT = rf"\p{{GCB=Other}}{_JOINER}\p{{GCB=V}}\p{{GCB=T}}\p{{GCB=LV}}\p{{GCB=LVT}}"
_STARTER = r"\p{GCB=Other}\p{GCB=Prepend}\p{GCB=RI}\p{GCB=L}\p{GCB=LV}\p{GCB=LVT}"
_SAFE_PAIR_PATTERN = rf"""(?V1)
    [\p{{GCB=Control}}\p{{GCB=LF}}](?s:.)                       # GB4: after a control
  | \r[^\n]
  | [^\r][\p{{GCB=Control}}\p{{GCB=CR}}\p{{GCB=LF}}]              # GB5: before a control
  | [{_LEFT}] [[{_STARTER}]--\p{{InCB=Consonant}}--\p{{ExtPict}}]  # GB999
  | [[{_LEFT}]--\p{{InCB=Extend}}--\p{{InCB=Linker}}] \p{{InCB=Consonant}}
  | [[{_LEFT}]--\p{{GCB=ZWJ}}] \p{{ExtPict}}
  | [\p{{GCB=Other}}{_JOINER}\p{{GCB=T}}\p{{GCB=LVT}}] \p{{GCB=V}}    # GB6-8: Hangul
  | [\p{{GCB=Other}}{_JOINER}] \p{{GCB=T}}
  | \p{{GCB=L}} [\p{{GCB=Other}}\p{{GCB=Prepend}}\p{{GCB=T}}\p{{GCB=RI}}]
  | \p{{GCB=RI}} [\p{{GCB=Other}}\p{{GCB=Prepend}}{_HANGUL}]
"""
_SAFE_PAIR = regex.compile(_SAFE_PAIR_PATTERN, regex.VERBOSE)
# The same pairs found scanning back: the last point before a cut from which \X can segment.
_LAST_SAFE_PAIR = regex.compile("(?r)" + _SAFE_PAIR_PATTERN, regex.VERBOSE)


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
    cut = _Cutter(text).cut
    while size - start > max_chars:
        end = cut(start, start + max_chars, start + floor)
        spans.append((start, end))
        start = end
    if start < size:
        spans.append((start, size))
    return spans


class _Cutter:
    """Finds where each chunk of one text should end; each window costs a few C-level searches.

    Every search starts from the end of the window and stops at the first hit, and cluster
    boundaries are only worked out around candidate cuts, so the work is linear in the text.
    """

    __slots__ = ("breaks", "ends", "stops", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        # An rfind costs about 0.1 us even for a character the text lacks, and a window may try
        # a dozen: one scan of the text for each first leaves only the characters it has.
        self.breaks = tuple(ch for ch in _BREAKS if ch in text)
        self.stops = tuple(ch for ch in _STOPS if ch in text)
        # Cluster ends from the last segmentation: a known boundary, then up to one past the cut.
        self.ends: list[int] = [0]

    def cut(self, start: int, limit: int, low: int) -> int:
        """Return the end of the chunk from `start`: the best boundary in [low, limit], else a
        hard cut at the last cluster boundary (or at `limit` inside one overlong cluster).

        A regex call costs about half a microsecond, a string test a tenth of that, so the
        usual shapes (a letter before `low`, a lone newline pair, a full stop and a space)
        are read off directly and the regular expressions only settle the rest.
        """
        text = self.text
        rfind = text.rfind
        # Only a boundary whose trail reaches `low` gives a cut that long, so searching back to
        # where such a boundary could begin is enough; it halves the scanning on plain prose.
        ch = text[low - 1]
        pos = low if ch.isascii() and ch.isalnum() else _REACH.match(text, start, low).start()
        # str.rfind finds the last break or full stop far faster than a reverse regex scans (about
        # 15 ns a character), so those searches start there, or are skipped when there is none.
        breaks = max(map(rfind, self.breaks, repeat(pos), repeat(limit)), default=-1) + 1
        if breaks:
            last = text[breaks - 1]
            paragraph = last == "\u2029" or (
                last == "\n" and breaks - 2 >= pos and text[breaks - 2] == "\n"
            )
            cut = self._last_cut(
                _PARAGRAPH, pos, breaks, start, low, limit, breaks if paragraph else None
            )
            if cut is None:  # the last break ends the last line
                cut = self._last_cut(_LINE, pos, breaks, start, low, limit, breaks)
            if cut is not None:
                return cut
        stops = max(map(rfind, self.stops, repeat(pos), repeat(limit)), default=-1) + 1
        if stops:
            # Room for the closing quotes and the whitespace after the last stop.
            run = stops
            if run < limit and text[run] in _CLOSER_CHARS:
                run = _CLOSER_RUN.match(text, run, limit).end()
            end: int | None = None
            if text[stops - 1] in "。！？｡":
                end = run
            elif run < limit and text[run] in _WS_CHARS:
                end = run + 1
            cut = self._last_cut(_SENTENCE, pos, min(limit, run + 1), start, low, limit, end)
            if cut is not None:
                return cut
        cut = self._last_cut(_SPACE, pos, limit, start, low, limit)
        if cut is not None:
            return cut
        cut = self.snap(start, limit)
        return limit if cut == start else cut  # one cluster longer than max_chars: limit wins

    def _last_cut(
        self,
        level: regex.Pattern,
        pos: int,
        endpos: int,
        start: int,
        low: int,
        limit: int,
        end: int | None = None,
    ) -> int | None:
        """Return the last cut in [low, limit] after a `level` boundary and its trail, or None.

        `end`, when given, is where the last `level` match in [pos, endpos] ends, already known.
        """
        text = self.text
        while True:
            if end is None:
                match = level.search(text, pos, endpos)
                if match is None:
                    return None
                end = match.end()
            cut = end
            if cut < limit and not ((ch := text[cut]).isascii() and ch.isalnum()):
                cut = _TRAIL.match(text, cut, limit).end()
            if not _plainly_between(text, cut):
                cut = self.snap(start, cut)
            # Cuts only move left as the search does, so once one is too short all the rest are.
            if cut < low:
                return None
            if cut >= end:
                return cut
            # The boundary fell inside a cluster: every boundary in (cut, end) snaps to cut too.
            endpos, end = cut, None

    def snap(self, start: int, p: int) -> int:
        """Return the last grapheme-cluster boundary in [start, p], for start <= p < len(text),
        taking `start` (a chunk start) to be a boundary."""
        text = self.text
        if p == start or _plainly_between(text, p):
            return p
        ends = self.ends
        if not start <= ends[0] <= p < ends[-1]:
            # Segment with \X from the last point before p that is plainly a boundary (the
            # chunk start at worst), to one character past p, since whether p is a boundary
            # depends on the character after it. Only the clusters around p are looked at.
            safe = _LAST_SAFE_PAIR.search(text, start, p)
            origin = safe.start() + 1 if safe else start
            sizes = map(len, _CLUSTER.findall(text, origin, p + 1))
            ends = self.ends = list(accumulate(sizes, initial=origin))
        return ends[bisect_right(ends, p) - 1]


def _plainly_between(text: str, p: int) -> bool:
    """True if the two characters around `p` alone show that it is a cluster boundary."""
    left, right = text[p - 1], text[p]
    # Below U+0300 every character is Other, Control, CR or LF: only CR LF holds together. An
    # ASCII character is not joined to what precedes it either (it is no mark, consonant or
    # pictograph), unless that is a Prepend character, and those all lie at U+0600 and above.
    if right < "\u0300" and (left < "\u0300" or (right < "\x80" and left < "\u0600")):
        return left != "\r" or right != "\n"
    return _SAFE_PAIR.match(text, p - 1) is not None
