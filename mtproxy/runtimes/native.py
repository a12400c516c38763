"""What the adapters share about a client API a runtime serves itself (``Runtime.native_apis``):
reading a relayed answer, and looking through a relayed request for what a runtime's own
serving would lose (``Runtime.relays``).

The checks read the client's body as it came (lenient: a field of an unexpected type is left to
the translation, which answers it with the client's own error).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..stream.anthropic import AnthropicSSEDecoder, observe_message
from ..stream.events import Report, StreamDecoder
from ..stream.native import NativeDecoder, observe_native
from ..wire import Native

Observe = Callable[[dict[str, Any], Report], None]


def relay_decoder(native: Native, observe: Observe, report: Report, attention: tuple[bytes, ...] = ()) -> StreamDecoder:
    """The tap on the runtime's own stream in the client's API: usage read where the API puts
    it, then ``observe`` (the adapter's own fields)."""
    if native.kind == "messages":  # Anthropic SSE
        return AnthropicSSEDecoder(observe, report, attention)
    return NativeDecoder(native.kind, observe, report)


def observe_body(native: Native, obj: dict[str, Any], report: Report, observe: Observe) -> None:
    """The runtime's own non-streaming answer in the client's API: its usage, then ``observe``."""
    if native.kind == "responses":
        observe_native("responses", obj, report, observe)
    else:
        observe_message(obj, report)
        observe(obj, report)


def nothing(obj: dict[str, Any], report: Report) -> None:
    """No fields of the adapter's own to read."""


# --- Anthropic Messages -----------------------------------------------------------------------------

def message_blocks(payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every content block of a Messages body: the system's, each message's, and those inside a
    tool_result."""
    system = payload.get("system")
    blocks: list[Any] = list(system) if isinstance(system, list) else []
    for message in payload.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            blocks.extend(content)
    while blocks:
        block = blocks.pop()
        if isinstance(block, dict):
            yield block
            inner = block.get("content")
            if block.get("type") == "tool_result" and isinstance(inner, list):
                blocks.extend(inner)


def tool_choice(payload: dict[str, Any]) -> dict[str, Any]:
    choice = payload.get("tool_choice")
    return choice if isinstance(choice, dict) else {}


# --- OpenAI Responses -------------------------------------------------------------------------------

def response_parts(payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every content part of every input item of a Responses body."""
    items = payload.get("input")
    for item in items if isinstance(items, list) else ():
        content = item.get("content") if isinstance(item, dict) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict):
                yield part
