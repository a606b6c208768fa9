"""The messages the ``openai`` provider sends: system prompt, chunk and reduce templates, and
the sections a reduce prompt is made of.

Templates use plain placeholder replacement (``{text}``, ``{sections}``), not str.format, so
a custom template may show literal JSON braces. CHUNKQ_PROMPT_FILE and
CHUNKQ_REDUCE_PROMPT_FILE override the two defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SYSTEM_PROMPT = (
    "You are a careful text analyst. Reply with one JSON object and nothing else: "
    "no prose, no code fences."
)

# The user message for one chunk; ``{text}`` is replaced by the chunk.
DEFAULT_PROMPT = """\
Analyse the text between <chunk> and </chunk>. Reply with a JSON object with these keys:
- "summary": one to three sentences summarising the text, in the text's language
- "sentiment": the overall sentiment, one of "positive", "negative", "neutral", "mixed"
- "sentiment_score": one of -1, -0.75, -0.5, -0.25, 0, 0.25, 0.5, 0.75, 1 (-1 most negative)
- "key_points": a list of at most four short strings, the main points in order

<chunk>
{text}
</chunk>"""

# The reduce step's user message; ``{sections}`` is replaced by ordered partial analyses
# (the chunks' analyses, or at the upper levels of a reduce tree, the groups' reductions).
REDUCE_PROMPT = """\
Below are analyses of consecutive parts of one document, in order. Combine them into an
analysis of the whole document. Reply with a JSON object with these keys:
- "summary": three to six sentences summarising the whole document, in its language
- "sentiment": the overall sentiment, one of "positive", "negative", "neutral", "mixed"
- "sentiment_score": one of -1, -0.75, -0.5, -0.25, 0, 0.25, 0.5, 0.75, 1 (-1 most negative)
- "key_points": a list of at most four short strings, the document's main points in order

{sections}"""


def load_template(path: str | None, variable: str, placeholder: str) -> str | None:
    """The template in file ``path`` (None when unset); it must contain ``placeholder``.

    ``variable`` names the setting in errors, so a bad file is reported at worker start.
    """
    if not path:
        return None
    try:
        template = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{variable}={path!r} cannot be read: {exc}") from exc
    if placeholder not in template:
        raise ValueError(f"{variable}={path!r} must contain the placeholder {placeholder}")
    return template


def reduce_section(label: Any, result: dict[str, Any]) -> str:
    """One part of the reduce prompt: an analysis's summary and key points."""
    body = str(result.get("summary", ""))
    if result.get("key_points"):
        body += "\nKey points: " + "; ".join(str(p) for p in result["key_points"])
    return f"<part index={label}>\n{body}\n</part>"


def shorten_section(section: str) -> str:
    """A section cut to about half its length at a word boundary, still closed by its tag."""
    head, _, rest = section.partition("\n")
    body = rest.removesuffix("\n</part>")
    keep = body[: max(1, len(body) // 2)].rsplit(" ", 1)[0]
    return f"{head}\n{keep}…\n</part>"
