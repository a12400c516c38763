"""The tap on a stream relayed in a client API a runtime serves itself (``Runtime.native_apis``):
typed SSE events (``event: <type>`` + JSON data with the same ``type``), not chat chunks.

Every event is parsed (they are rewritten or re-checked by the client format anyway); a content
chunk is an event of one of :data:`CONTENT_EVENTS`, the counterpart of a chat chunk with text or
tool-call arguments in it (stream/tap.py), and the usage is read where the API puts it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .events import Batch, Report
from .tap import EventTap

# The events that carry generated content, per API (the Endpoint kind of the native request).
CONTENT_EVENTS: dict[str, frozenset[str]] = {
    "responses": frozenset({
        "response.output_text.delta", "response.refusal.delta", "response.function_call_arguments.delta",
        "response.reasoning_text.delta", "response.reasoning_summary_text.delta",
    }),
}


# Of those, the reasoning (thinking) ones: not the answer the user sees.
_REASONING_EVENTS = frozenset({"response.reasoning_text.delta", "response.reasoning_summary_text.delta"})


def _int(value: Any) -> int | None:
    return value if value.__class__ is int else None


def observe_responses(obj: dict[str, Any], report: Report) -> None:
    """OpenAI Responses usage, on a Response object or an event carrying one (``response``):
    ``input_tokens`` (cached ones included) and ``output_tokens``."""
    response = obj.get("response")
    if response.__class__ is not dict:
        response = obj
    usage = response.get("usage")
    if usage.__class__ is dict:
        prompt, completion = _int(usage.get("input_tokens")), _int(usage.get("output_tokens"))
        if prompt is not None:
            report.prompt_tokens = prompt
        if completion is not None:
            report.completion_tokens = completion


# Where each API reports its usage: run before the adapter's own observers, whose figures (a
# runtime's timings) fill only what the API's usage left open.
USAGE: dict[str, Callable[[dict[str, Any], Report], None]] = {"responses": observe_responses}


def observe_native(kind: str, obj: dict[str, Any], report: Report,
                   observe: Callable[[dict[str, Any], Report], None]) -> None:
    """One parsed answer or event of API ``kind``: its usage, then the adapter's observers."""
    reader = USAGE.get(kind)
    if reader is not None:
        reader(obj, report)
    observe(obj, report)


class NativeDecoder(EventTap):
    """Typed SSE in, the same events out (each with the runtime's bytes), content counted."""

    __slots__ = ("_kind", "_content")

    def __init__(self, kind: str, observe: Callable[[dict[str, Any], Report], None], report: Report) -> None:
        super().__init__(observe, report, None)  # every event parsed
        self._kind = kind
        self._content = CONTENT_EVENTS.get(kind, frozenset())

    def _parsed(self, obj: dict[str, Any]) -> int:
        kind_of = obj.get("type")
        if kind_of.__class__ is str and kind_of in self._content:
            return 1
        if "response" in obj or "usage" in obj or "timings" in obj:
            observe_native(self._kind, obj, self._report, self._observe)
        return 0

    def _answer_in(self, batch: Batch) -> bool:  # a content event that is not reasoning
        events = batch.events
        assert events is not None  # every event parsed
        kinds = self._content
        for _, obj in events:
            kind_of = obj.get("type") if obj.__class__ is dict else None
            if kind_of.__class__ is str and kind_of in kinds and kind_of not in _REASONING_EVENTS:
                return True
        return False
