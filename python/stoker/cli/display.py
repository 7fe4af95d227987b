"""How the commands show what they read: times, short reprs, results, JSON, tables."""

from __future__ import annotations

import json
import reprlib
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .._base import serialization
from ..client.job import retention_ended
from ..client.queue import Queue
from ..errors import ResultExpiredError

if TYPE_CHECKING:
    from .._core import JobRecord

#: Arguments and results are shown as a repr cut to this many characters.
SUMMARY_CHARS = 300


def iso(ms: int | None) -> str | None:
    """A time in ms since the epoch as ISO 8601 in UTC, to the millisecond."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def when(ms: int | None) -> str:
    """``iso(ms)``, or ``-`` for no time."""
    return "-" if ms is None else str(iso(ms))


def seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def json_text(text: str | None) -> Any:
    """JSON text stored by the engine (labels, progress, usage), parsed; kept as text if it is not JSON."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


_REPR = reprlib.Repr()
_REPR.maxstring = 80
_REPR.maxother = 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxdict = 8
_REPR.maxlevel = 3


def short_repr(value: Any) -> str:
    try:
        text = _REPR.repr(value)
    except Exception as error:
        text = f"<unrepresentable {type(value).__qualname__}: {type(error).__name__}>"
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 3] + "..."


def unpickle(queue: Queue, data: bytes, *, job_id: int, what: str) -> Any:
    """Unpickle a payload or a result, checking its signature first when the queue signs them."""
    return serialization.loads(queue.sealer.unseal(data, job_id=job_id, what=what))


def result(queue: Queue, record: JobRecord, now_ms: int) -> dict[str, Any] | None:
    """A short repr of a complete job's result, or why it cannot be shown."""
    if record.status != "complete":
        return None
    expired_ms = retention_ended(record, now_ms)
    if expired_ms is not None:
        expired = ResultExpiredError(record.id, expired_ms)
        return {"repr": None, "error": f"{type(expired).__name__}: {expired}", "bytes": 0}
    if record.result is None:
        return {"repr": None, "error": "its task stores no result (store_result=False)", "bytes": 0}
    try:
        value = unpickle(queue, record.result, job_id=record.id, what="result")
    except Exception as error:
        return {"repr": None, "error": f"{type(error).__name__}: {error}", "bytes": len(record.result)}
    return {"repr": short_repr(value), "error": None, "bytes": len(record.result)}


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, default=str))


def print_table(header: Sequence[str], rows: list[Sequence[object]]) -> None:
    cells = [[str(h) for h in header]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.rstrip().splitlines())


def compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
