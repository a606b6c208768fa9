"""A job's report told for people: the few lines ``--wait`` ends with on a terminal.

Status, chunks, failures and duration first, then what the analysis found, read from the
summary whatever the provider made of it (the builtin's keywords and sentiment, a model's
key points, a test double's counts), and the reduce step's outcome when there is one. The
full report stays one ``--json`` (or one pipe) away.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

TOP_KEYWORDS = 8
TOP_POINTS = 5
WIDTH = 100  # a value shown inline is cut to about this many characters


def describe(report: dict[str, Any]) -> str:
    """The human summary of a job ``report`` (as the API gives it), as lines of text."""
    total = int(report.get("chunks_total") or 0)
    failed = int(report.get("chunks_failed") or 0)
    done = int(report.get("chunks_completed") or 0)
    lines = [
        f"job       {report.get('job_id')}",
        f"status    {report.get('status')}",
        f"chunks    {done} of {total} succeeded",
        f"failed    {failed}" + (_first_errors(report) if failed else ""),
    ]
    if (took := duration(report.get("created_at"), report.get("finished_at"))) is not None:
        lines.append(f"duration  {took}")
    result = report.get("analysis_result") or {}
    lines += _summary_lines(result.get("summary"))
    if isinstance(result.get("reduce"), dict):
        lines += _reduce_lines(result["reduce"])
    return "\n".join(lines)


def duration(start: Any, end: Any) -> str | None:
    """``end - start`` (ISO timestamps) as ``1h 02m``, ``3m 07s`` or ``4.2 s``; None without
    both."""
    try:
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def _first_errors(report: dict[str, Any]) -> str:
    """The final error of the first failed chunk, to say why without the whole list."""
    errors = report.get("chunk_errors") or []
    if not errors or not isinstance(errors[0], dict):
        return ""
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"  first: chunk {first.get('chunk_index')}: {_cut(str(first.get('error')))}{more}"


def _summary_lines(summary: Any, indent: str = "") -> list[str]:
    """What the summary says, whichever provider's shape it has."""
    if not isinstance(summary, dict):
        return [] if summary is None else [f"{indent}summary   {_cut(_compact(summary))}"]
    if "error" in summary:
        return [f"{indent}summary   could not be made: {_cut(str(summary['error']))}"]
    if isinstance(summary.get("providers"), list):  # the workers changed provider mid-job
        lines = []
        for part in summary["providers"]:
            if isinstance(part, dict):
                name, chunks = part.get("provider"), part.get("chunks")
                lines.append(f"{indent}provider  {name} ({chunks} chunks)")
                lines += _summary_lines(part.get("summary"), indent + "  ")
        return lines
    lines = []
    counts = [f"{summary[key]} {key}" for key in ("chars", "words", "sentences") if key in summary]
    if counts:
        lines.append(f"{indent}text      {', '.join(counts)}")
    if (mood := _sentiment(summary.get("sentiment"))) is not None:
        lines.append(f"{indent}sentiment {mood}")
    keywords = [k.get("keyword") for k in summary.get("keywords") or [] if isinstance(k, dict)]
    if keywords:
        lines.append(f"{indent}keywords  {', '.join(map(str, keywords[:TOP_KEYWORDS]))}")
    points = [p for p in summary.get("key_points") or [] if isinstance(p, str)]
    if points:
        lines.append(f"{indent}key points")
        lines += [f"{indent}  - {_cut(point)}" for point in points[:TOP_POINTS]]
    if isinstance(summary.get("summary"), str):
        lines.append(f"{indent}summary   {_cut(summary['summary'])}")
    if not lines:  # a shape this does not know: show it as it is, cut short
        lines.append(f"{indent}summary   {_cut(_compact(summary))}")
    return lines


def _sentiment(sentiment: Any) -> str | None:
    """The builtin's compound score, or a model's label and score."""
    if not isinstance(sentiment, dict):
        return None
    if "compound" in sentiment:
        return f"{sentiment['compound']:+.2f} (compound; -1 negative .. +1 positive)"
    if "label" in sentiment:
        return f"{sentiment['label']} ({sentiment.get('score', 0):+.2f})"
    return None


def _reduce_lines(reduce: dict[str, Any]) -> list[str]:
    """The reduce step: its status, and its result or error."""
    status = reduce.get("status")
    if status == "failed":
        return [f"reduce    failed: {_cut(str(reduce.get('error')))}"]
    if status != "succeeded":
        return [f"reduce    {status}"]
    result = reduce.get("result")
    lines = ["reduce    succeeded"]
    if isinstance(result, dict) and isinstance(result.get("summary"), str):
        lines.append(f"  {_cut(result['summary'])}")
        points = [p for p in result.get("key_points") or [] if isinstance(p, str)]
        lines += [f"  - {_cut(point)}" for point in points[:TOP_POINTS]]
    else:
        lines.append(f"  {_cut(_compact(result))}")
    return lines


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _cut(text: str) -> str:
    """One line of at most about WIDTH characters."""
    text = " ".join(text.split())
    return text if len(text) <= WIDTH else text[: WIDTH - 1] + "…"
