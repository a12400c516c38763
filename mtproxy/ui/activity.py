"""One finished request as the page shows it, and its exports (JSON Lines, CSV).

A record is a plain tuple in the order of :data:`COLUMNS`, built from the request's meter and
measurement (the same figures ``/metrics`` observes) by the hub's observer (hub.py
``Hub.record``, on the request path: nothing formatted there); formatting waits until someone
reads it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson

COLUMNS = ("time", "client", "endpoint", "stream", "model", "backend", "mtp", "status", "ttft_s", "decode_tps",
           "tokens_per_step", "drafted", "accepted", "tokens_in", "tokens_out", "duration_s", "retries")
Record = tuple[Any, ...]
FILTERS = ("model", "backend", "status", "client", "endpoint")  # exact matches, as query parameters

def format_name(kind: type) -> str:
    """A client format's name in a record: OpenAIFormat -> openai, OllamaEmbedFormat -> ollamaembed."""
    return kind.__name__.removesuffix("Format").lower() or "unknown"


def as_dict(rec: Record) -> dict[str, Any]:
    return dict(zip(COLUMNS, rec))


def matches(rec: Record, wanted: Mapping[str, str]) -> bool:
    """Whether ``rec`` passes the filters (exact, as strings: ``status=200``)."""
    for key, value in wanted.items():
        if str(rec[COLUMNS.index(key)]) != value:
            return False
    return True


def filters(query: Mapping[str, str]) -> dict[str, str]:
    return {k: query[k] for k in FILTERS if query.get(k)}


def jsonl(records: Iterable[Record]) -> Iterator[bytes]:
    for rec in records:
        yield orjson.dumps(as_dict(rec)) + b"\n"


def csv_rows(records: Iterable[Record]) -> Iterator[bytes]:
    """CSV with a header row; a value a spreadsheet would run as a formula is quoted with ``'``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for rec in records:
        writer.writerow([_cell(v) for v in rec])
        if buf.tell() > 65536:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
