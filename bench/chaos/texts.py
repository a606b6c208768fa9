"""The texts the chaos soak submits: prose of random words in many scripts, some of it
carrying the marker word the simulated provider fails every attempt of."""

from __future__ import annotations

import random
import re

MARKER = "zugzwangle"  # the simulated provider fails every attempt of a chunk holding this word
MARKED = re.compile(rf"\b{MARKER}\b")
WORDS = [
    "queue", "lease", "worker", "chunk", "result", "retry", "backoff", "commit", "index", "merge",
    "order", "text", "drain", "crash", "fence", "claim", "naïve", "café", "Zürich", "東京",
    "데이터", "🙂", "déjà-vu", "«quoted»", "—", "(aside)", "[note]",
    "cafe\u0301", "10\u00a0km",  # a combining mark, a no-break space
]  # fmt: skip


def make_text(rng: random.Random) -> tuple[str, int]:
    """A text of roughly 10-200 chunks and its max_chunk_chars. A quarter of the texts carry the
    marker word now and then; one in twenty has it nearly everywhere (so whole jobs fail)."""
    max_chars, kind = rng.randint(100, 400), rng.random()
    share = 0.5 if kind < 0.05 else 0.004 if kind < 0.3 else 0.0
    target = (rng.randint(10, 30) if share == 0.5 else rng.randint(10, 200)) * max_chars * 4 // 5
    parts: list[str] = []
    size = 0
    while size < target:
        words = [MARKER if rng.random() < share else rng.choice(WORDS) for _ in range(14)]
        end = rng.choice(".!?;,") + rng.choice(("  ", " ", " ", "\n", "\n\n", " \r\n\r\n"))
        parts.append(" ".join(words[: rng.randint(3, 14)]) + end)
        size += len(parts[-1])
    return "".join(parts), max_chars
