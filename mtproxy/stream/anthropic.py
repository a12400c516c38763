"""The tap on a runtime's own Anthropic Messages stream (relayed to an Anthropic client as it is):
cut it into events, count its content chunks, read its usage into the :class:`Report`.

A content chunk is a ``content_block_delta`` event whose text, thinking or partial JSON is not
empty (one per delta, as one OpenAI chunk with content or tool calls is one). Blocks of events
without an attention marker are counted from their bytes: inside a JSON string a quote is
escaped, so ``"content_block_delta"`` with its quotes only ever stands for the event type, and
``""`` only for an empty string (or a text ending in an escaped quote, which is then parsed:
exact either way). Usage: ``input_tokens`` excludes the prompt cache in Anthropic's convention,
so the prompt is ``input_tokens`` + ``cache_read_input_tokens`` + ``cache_creation_input_tokens``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .events import Batch, Report
from .tap import EventTap

_DELTA = b'"content_block_delta"'
_ANSWER_DELTAS = (b'"text_delta"', b'"input_json_delta"')  # the others (thinking) are reasoning
# events parsed rather than counted from their bytes: those that carry usage or end the stream,
# errors, and any with an empty string (an empty delta counts for nothing)
ATTENTION = (b'""', b'"message_start"', b'"message_delta"', b'"message_stop"', b'"error"', b"signature_delta")
_DELTA_FIELDS = ("text", "thinking", "partial_json")


def observe_usage(usage: Any, report: Report) -> None:
    """Anthropic ``usage`` (a Message's, ``message_start``'s or ``message_delta``'s, cumulative)."""
    if usage.__class__ is not dict:
        return
    prompt = None
    for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
        value = usage.get(key)
        if value.__class__ is int:
            prompt = (prompt or 0) + value
    if prompt is not None:
        report.prompt_tokens = prompt
    output = usage.get("output_tokens")
    if output.__class__ is int:
        report.completion_tokens = output


def observe_message(obj: dict[str, Any], report: Report) -> None:
    """One Anthropic stream event or non-streaming Message."""
    kind = obj.get("type")
    if kind == "message_start":
        message = obj.get("message")
        if message.__class__ is dict:
            observe_usage(message.get("usage"), report)
    elif kind in ("message_delta", "message"):
        observe_usage(obj.get("usage"), report)


def delta_count(obj: Any) -> int:
    """1 for a ``content_block_delta`` carrying generated content, else 0."""
    if obj.__class__ is not dict or obj.get("type") != "content_block_delta":
        return 0
    delta = obj.get("delta")
    if delta.__class__ is not dict:
        return 0
    for field in _DELTA_FIELDS:
        value = delta.get(field)
        if value and value.__class__ is str:
            return 1
    return 0


class AnthropicSSEDecoder(EventTap):
    """Anthropic SSE in, the same events out (the runtime's bytes relayed as they are), content
    counted and usage read on the way; ``observe``: the adapter's own observers (llama.cpp's
    ``timings``, where a build adds them), run on every parsed event."""

    __slots__ = ()

    def __init__(self, observe: Callable[[dict[str, Any], Report], None], report: Report,
                 attention: tuple[bytes, ...] = ()) -> None:
        super().__init__(observe, report, ATTENTION + attention)

    def _count_plain(self, block: bytes) -> int:  # deltas, block starts and stops, pings
        return block.count(_DELTA)

    def _parsed(self, obj: dict[str, Any]) -> int:
        observe_message(obj, self._report)
        self._observe(obj, self._report)
        return delta_count(obj)

    def _answer_in(self, batch: Batch) -> bool:  # a text or tool input delta: not thinking only
        raw = batch.raw
        assert raw is not None
        return any(delta in raw for delta in _ANSWER_DELTAS)
