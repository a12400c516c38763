"""One stream's events as the proxy carries them, whatever the client's or the runtime's format.

Everything a runtime hands back is in OpenAI's format by the time it leaves its adapter: SSE events
as ``(raw bytes, parsed object)`` pairs in :class:`Batch` es, bodies as JSON bytes. What the
runtime itself reported about the request (token counts, drafts, its own timings) is collected in
a :class:`Report`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(slots=True)
class Report:
    """What the runtime itself reported about one request. ``None`` means it did not say."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    draft_tokens: int | None = None  # speculative tokens proposed (MTP heads or a draft model)
    accepted_tokens: int | None = None  # of those, accepted
    draft_rounds: int | None = None  # verification steps that checked drafts (vLLM num_spec_steps)
    # accepted drafts by their position in the draft (0: the first drafted token), where the
    # runtime reports how many drafts each step accepted
    accepted_by_position: list[int] | None = None
    tokens_per_step: float | None = None  # runtime's own tokens per decode iteration (mean acceptance length)
    reasoning_tokens: int | None = None  # of the completion tokens, reasoning (thinking) ones
    prompt_seconds: float | None = None  # runtime's own prompt-processing time
    decode_seconds: float | None = None  # runtime's own generation time


class _Done:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DONE"


DONE: Any = _Done()  # the parsed form of `data: [DONE]`

# One stream event in OpenAI's format: the bytes the runtime sent for it (None when the adapter
# made the event up, e.g. translating NDJSON), and its parsed data: a dict, DONE, or None for
# events without JSON data (comments, keep-alives).
Event = tuple[bytes | None, Any]


class _Plain:
    __slots__ = ()

    def __repr__(self) -> str:
        return "PLAIN"


# The parsed form of an event the decoder did not need to parse: a plain content chunk.
PLAIN: Any = _Plain()


class Run:
    """A run of plain content chunks written alike but for their texts, cut into its texts by
    the decoder (stream/tap.py ``Template.texts``, for a format that rewrites them): ``data``,
    the bytes object of the batch that holds the run (``raw``, or one PLAIN event's raw);
    ``texts``, each event's text as it stands between its quotes (escaped JSON string contents,
    no quote or line break in it, maybe empty), in order; ``joined``, all of them in one."""

    __slots__ = ("data", "texts", "joined")

    def __init__(self, data: bytes, texts: list[bytes], joined: bytes) -> None:
        self.data = data
        self.texts = texts
        self.joined = joined


class Batch:
    """The complete events one upstream read finished.

    ``raw``: the runtime's bytes for them (None when the adapter made the events up);
    ``events``: the events one by one, or None when every one is a plain content chunk (the
    fast path: nothing in them needs the proxy's attention, and ``raw`` is relayed as it is);
    ``content``: how many carry generated content; ``hidden``: all of that content is reasoning
    (thinking), none of it the answer the user sees. A decoder that cannot tell says False.
    ``run``: the texts of a run of answer content chunks, when the decoder was asked for them
    and found one (:class:`Run`).
    """

    __slots__ = ("raw", "events", "content", "hidden", "run")

    def __init__(self, raw: bytes | None, events: list[Event] | None, content: int, hidden: bool = False,
                 run: Run | None = None) -> None:
        self.raw = raw
        self.events = events
        self.content = content
        self.hidden = hidden
        self.run = run


class StreamFailure(Exception):
    """The runtime reported an error inside a stream that had already started."""


class StreamDecoder(Protocol):
    def feed(self, data: bytes) -> Batch | None:
        """Upstream bytes in, the complete OpenAI events they finish out (None: none yet)."""
        ...

    def flush(self) -> Batch | None:
        """At upstream EOF: whatever a trailing partial event still completes."""
        ...
