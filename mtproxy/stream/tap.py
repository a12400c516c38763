"""The tap on a relayed OpenAI SSE stream: cut it into events, count its content chunks, and
hand the events that need the proxy's attention to the adapter's observers, while the runtime's
own bytes pass on untouched. :class:`EventTap` is the loop every tap shares (stream/anthropic.py,
stream/native.py too; :class:`SSEDecoder` writes its scan out): frame, then parse the events from
the first that needs attention on.

A content chunk is defined once, by :data:`TEXT_FIELDS` and :data:`STRUCTURED_FIELDS`: the byte
markers of the fast paths and :func:`content_count` of a parsed event both derive from them. The
attention markers (events that are parsed) derive from the fields each adapter declares it
observes (:func:`attention_markers`), so an adapter cannot read a field its fast path skips.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import orjson

from .events import DONE, PLAIN, Batch, Event, Report, Run
from .sse import EventFramer


def parse_event(raw: bytes) -> Any:
    """The data of one SSE event (without its blank line): dict, DONE, or None."""
    if raw.startswith(b"data: ") and b"\n" not in raw:
        data = raw[6:]
    else:
        data = b"\n".join(
            line[5:].removeprefix(b" ") for line in raw.split(b"\n") if line.startswith(b"data:"))
        if not data:
            return None
    if data == b"[DONE]":
        return DONE
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


# --- what a content chunk is ---------------------------------------------------------------------
# An event carries generated content when one of these fields of its first choice (the delta of a
# chat chunk, the choice of a text completion) is a non-empty string...
TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "chat": ("content", "reasoning_content", "reasoning"),
    "completions": ("text",),
}
# ...or one of these is non-empty (an attention marker: such events are always parsed).
STRUCTURED_FIELDS: dict[str, tuple[str, ...]] = {"chat": ("tool_calls",), "completions": ()}
# Of the text fields, these carry reasoning (thinking: vLLM `reasoning`, llama.cpp, SGLang and
# older vLLM `reasoning_content`), the others the answer the user sees.
REASONING_FIELDS = frozenset({"reasoning_content", "reasoning"})


def content_count(obj: Any, kind: str = "chat") -> int:
    """How many content chunks one parsed OpenAI event is: its non-empty text fields, plus one
    for structured content (tool calls). The byte count of the fast paths (:func:`_texts`) counts
    the same."""
    if obj.__class__ is not dict:
        return 0
    choices = obj.get("choices")
    if not choices or choices[0].__class__ is not dict:
        return 0
    choice = choices[0]
    part = choice.get("delta")
    if part is None:
        part = choice
    elif part.__class__ is not dict:
        return 0
    n = 0
    for field in TEXT_FIELDS["chat" if "delta" in choice else "completions"]:
        value = part.get(field)
        if value and value.__class__ is str:
            n += 1
    for field in STRUCTURED_FIELDS.get(kind, ()):
        if part.get(field):
            return n + 1
    return n


def shows_answer(obj: Any) -> bool:
    """Whether one parsed OpenAI event carries answer content: a non-empty text field that is not
    reasoning (:data:`REASONING_FIELDS`), or tool calls."""
    if obj.__class__ is not dict:
        return False
    choices = obj.get("choices")
    if not choices or choices[0].__class__ is not dict:
        return False
    choice = choices[0]
    part = choice.get("delta")
    if part is None:
        return True  # a text completion: no reasoning there
    if part.__class__ is not dict:
        return False
    for field in TEXT_FIELDS["chat"]:
        value = part.get(field)
        if value and value.__class__ is str and field not in REASONING_FIELDS:
            return True
    return any(part.get(field) for field in STRUCTURED_FIELDS["chat"])


@functools.cache
def _answer_markers(kind: str) -> tuple[bytes, ...]:
    """The keys of the answer's text fields, compact and spaced, up to the opening quote of a value."""
    return tuple(f'"{name}"{sep}"'.encode() for name in TEXT_FIELDS.get(kind, ())
                 if name not in REASONING_FIELDS for sep in (":", ": "))


@functools.cache
def _reasoning(kind: str) -> tuple[bool, re.Pattern[bytes]]:
    """For a stream of ``kind``: whether it has no reasoning fields (nothing to tell apart), and
    the pattern of a non-empty answer text: one of :func:`_answer_markers` and a byte that is not
    the closing quote (one search in C for what a loop of ``find`` would do)."""
    names = [re.escape(name.encode()) for name in TEXT_FIELDS.get(kind, ()) if name not in REASONING_FIELDS]
    return (not REASONING_FIELDS.intersection(TEXT_FIELDS.get(kind, ())),
            re.compile(b'"(?:' + b"|".join(names) + b')": ?"[^"]' if names else b"(?!)"))


def has_content(obj: Any) -> bool:
    """Whether one parsed OpenAI event carries generated content."""
    return content_count(obj) > 0


# --- what needs the proxy's attention ----------------------------------------------------------------
# Events carrying any of these are parsed (the end of the stream, errors, tool calls, SSE event
# names); a block of events without them is relayed as it is, and its content chunks are counted
# without parsing a byte of JSON. Every marker is one more scan of every byte relayed.
BASE_ATTENTION = (b"[DONE]", b'"error"', *(f'"{f}"'.encode() for f in STRUCTURED_FIELDS["chat"]), b"event:")


@dataclass(frozen=True, slots=True)
class Observer:
    """One field an adapter reads from the runtime's events into the :class:`Report`: the field's
    name (wherever it stands in the event) and the function that reads it from a parsed event."""

    field: str
    read: Callable[[dict[str, Any], Report], None]


def attention_markers(observers: Iterable[Observer]) -> tuple[bytes, ...]:
    """The markers of the events an adapter must see parsed: the base ones and a quoted key per
    field its observers read."""
    return (*(f'"{o.field}"'.encode() for o in observers), *BASE_ATTENTION)


def observe_all(observers: tuple[Observer, ...]) -> Callable[[dict[str, Any], Report], None]:
    """One function running every observer on a parsed event."""
    if len(observers) == 1:
        return observers[0].read

    def observe(obj: dict[str, Any], report: Report) -> None:
        for observer in observers:
            observer.read(obj, report)

    return observe


@functools.cache
def _text_markers(kind: str, spaced: bool) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """(field with text, field with empty text) byte markers for :data:`TEXT_FIELDS`, compact
    (pydantic, llama.cpp) or spaced (json.dumps) JSON. A field whose name ends with another's
    (``reasoning_content``, ``content``) is counted by that one's marker, which then starts after
    the opening quote: one scan for both."""
    sep = b'": "' if spaced else b'":"'
    names = TEXT_FIELDS.get(kind, ())
    markers = []
    for name in names:
        if any(other != name and other.endswith(name) for other in names):
            markers.append(name.encode() + sep)  # `content":"` counts `reasoning_content` too
        elif not any(name != other and name.endswith(other) for other in names):
            markers.append(b'"' + name.encode() + sep)
    return tuple(markers), tuple(m + b'"' for m in markers)


def _spaced(data: bytes) -> bool | None:
    """Whether the first JSON object in ``data`` is written with a space after its colons (None:
    there is none)."""
    at = data.find(b'{"')
    end = data.find(b'"', at + 2) if at >= 0 else -1
    return None if end < 0 else data.startswith(b'": ', end)


def _needs_attention(data: bytes, markers: tuple[bytes, ...]) -> bool:
    for marker in markers:
        if marker in data:
            return True
    return False


def _first_attention(data: bytes, markers: tuple[bytes, ...]) -> int:
    """Where the first marker needing attention starts; -1 when there is none."""
    first = -1
    for marker in markers:
        at = data.find(marker)
        if at >= 0 and (first < 0 or at < first):
            first = at
    return first


def _texts(data: bytes, markers: tuple[tuple[bytes, ...], tuple[bytes, ...]]) -> int:
    """How many text fields with something in them (:data:`TEXT_FIELDS`): one per content chunk."""
    n = 0
    for marker in markers[0]:
        n += data.count(marker)
    for marker in markers[1]:
        n -= data.count(marker)
    return n


# translate() deletes all but these: what is left of a run of events is its quotes and newlines.
_NOT_QUOTE_OR_NEWLINE = bytes(c for c in range(256) if c not in b'"\n')


class Template:
    """The bytes around the text of a plain content event, learnt from one such event.

    A runtime writes every content chunk of a stream alike but for the text (same id, model,
    created, keys in the same order), so a run of such events is checked and counted with three
    passes over the whole run instead of ten marker scans: every line has the template's quotes
    and ends with ``suffix`` + blank line (so no text holds a quote and no event holds another
    field), and the empty texts are counted by their own needle. An event that differs in
    anything but its text falls back to the marker scans.
    """

    __slots__ = ("prefix", "end", "quotes", "shape", "empty", "hidden", "answer", "cut", "between")

    def __init__(self, prefix: bytes, suffix: bytes, separator: bytes, hidden: bool = False) -> None:
        self.prefix = prefix
        self.hidden = hidden  # its text field is reasoning (REASONING_FIELDS)
        # its text field is a chat chunk's answer text (`content`): the message's text
        self.answer = not hidden and prefix.endswith(_answer_markers("chat"))
        self.end = suffix + b"\n\n"
        self.cut = itemgetter(slice(len(prefix), -len(suffix)))  # an event's text
        self.between = self.end + prefix  # the bytes between two texts of a run
        self.quotes = prefix.count(b'"') + suffix.count(b'"')
        # one event's quotes and newlines, in order
        self.shape = b'"' * self.quotes + b"\n\n"
        # a text field with nothing in it, whichever its name (content, reasoning_content, ...)
        self.empty = separator + self.end

    @classmethod
    def learn(cls, event: bytes, text_markers: tuple[bytes, ...]) -> Template | None:
        """From one plain event (one ``data:`` line, no attention marker) with one text field,
        not empty."""
        if b"\n" in event:
            return None
        found = [(event.find(m), m) for m in text_markers if m in event]
        if len(found) != 1:
            return None
        at, marker = found[0]
        start = at + len(marker)
        end = event.find(b'"', start)
        if end <= start or event.find(marker, start) >= 0 or event.find(b"\\", start, end) >= 0:
            return None  # no text (a role chunk is no model for content chunks), or an escape in it
        separator = marker[marker.rindex(b'"', 0, len(marker) - 1):]  # `":"` or `": "`
        prefix = event[:start]
        hidden = any(prefix.endswith(b'"' + name.encode() + separator) for name in REASONING_FIELDS)
        template = cls(prefix, event[end:], separator, hidden)
        if template.empty in template.prefix + b"x" + template.end:
            return None  # an empty text could not be told from a full one
        return template

    def single(self, data: bytes) -> int | None:
        """The content chunks (1, or 0 for an empty text) of ``data`` if it is one template
        event (a paced stream's read), else None: four C calls instead of ten marker scans."""
        if data.startswith(self.prefix) and data.endswith(self.end) and data.count(b"\n") == 2 \
                and data.count(b'"') == self.quotes:
            return 0 if data.endswith(self.empty) else 1
        return None

    def run(self, data: bytes) -> tuple[int, int, int] | None:
        """(start, end, content chunks) of the run of template events in ``data``: all of it
        but a first event (a role chunk) and the events after the run (finish, usage, [DONE])."""
        prefix, end_marker, shape = self.prefix, self.end, self.shape
        start = 0
        if not data.startswith(prefix):
            start = data.find(b"\n\n") + 2
            if not data.startswith(prefix, start):
                return None
        marks = data.translate(None, _NOT_QUOTE_OR_NEWLINE)
        if start:
            marks = marks[len(data[:start].translate(None, _NOT_QUOTE_OR_NEWLINE)):]
        end = data.rfind(end_marker)
        if end < start:
            return None
        end += len(end_marker)
        if end < len(data):
            marks = marks[:len(marks) - len(data[end:].translate(None, _NOT_QUOTE_OR_NEWLINE))]
        lines = len(marks) // len(shape)
        if marks != shape * lines or data.count(end_marker, start, end) != lines:
            return None
        return start, end, lines - data.count(self.empty, start, end)

    def texts(self, data: bytes) -> tuple[int, int, list[bytes], bytes] | None:
        """(start, end, texts, the texts joined) of the run of template events in ``data``, as
        :meth:`run` finds it, for a format that rewrites the texts (stream/events.py ``Run``).
        The check is exact: every event of the run is ``prefix``, a text without a quote or a
        line break, ``end``. It takes about the time of :meth:`run`'s passes, which that format
        would otherwise pay again to cut the texts out (it needs one event a line). Only the
        texts of the answer (``answer``: a chat chunk's ``content``); a run of reasoning is no
        message text (``hidden``: :meth:`run` checks it)."""
        if not self.answer:
            return None
        lines = data.split(b"\n")  # one byte: the quickest split on this CPython
        if lines[-1] or any(lines[1::2]):  # not one `data:` line per event
            return None
        events = lines[0:-1:2]
        prefix, end = self.prefix, self.end
        suffix = end[:-2]
        first, last = 0, len(events)
        if not events[0].startswith(prefix):  # a role chunk
            first = 1
        while last > first and not events[last - 1].endswith(suffix):  # finish, usage, [DONE]
            last -= 1
        if last <= first:
            return None
        # each text cut from its event in one C-level loop; then one check for the whole run:
        # its bytes are the template around these texts (compared in place), no text holds a
        # quote (so it is nothing but a text)
        texts = list(map(self.cut, events[first:last] if first or last < len(events) else events))
        joined = b"".join(texts)
        start = len(events[0]) + 2 if first else 0
        stop = len(data) - sum(len(e) + 2 for e in events[last:])
        inner = self.between.join(texts)
        head = start + len(prefix)
        if b'"' in joined or stop - head != len(inner) + len(end) or not data.startswith(prefix, start) \
                or not data.startswith(inner, head) or not data.startswith(end, stop - len(end)):
            return None
        return start, stop, texts, joined


class EventTap:
    """The loop shared by the taps on relayed SSE streams: whole events out of the reads, a block
    of events before the first one holding an ``attention`` marker passed on as it is (PLAIN, its
    content counted from its bytes by :meth:`_count_plain`), every event from there on parsed and
    handed to :meth:`_parsed` (which observes it and answers its content chunks). ``attention``
    None: every event is parsed.

    Reasoning: until the stream's first answer content, a batch with content is asked
    :meth:`_answer_in`; one whose content is all reasoning (thinking) is marked ``hidden``. From
    the first answer content on (``_shown``), nothing more is looked for."""

    __slots__ = ("_framer", "_attention", "_observe", "_report", "_shown")

    def __init__(self, observe: Callable[[dict[str, Any], Report], None], report: Report,
                 attention: tuple[bytes, ...] | None) -> None:
        self._framer = EventFramer()
        self._attention = attention
        self._observe = observe
        self._report = report
        self._shown = False  # answer content seen (or the format has no reasoning): nothing to tell apart

    def feed(self, data: bytes) -> Batch | None:
        complete = self._framer.feed(data)
        return self._told(complete) if complete else None

    def flush(self) -> Batch | None:
        tail = self._framer.flush()
        return self._told(tail) if tail else None

    def _told(self, complete: bytes) -> Batch:
        """The batch of whole events; before the stream's first answer content, ``hidden`` when
        its content is all reasoning."""
        batch = self._batch(complete)
        if not self._shown and batch.content:
            if self._answer_in(batch):
                self._shown = True
            else:
                batch.hidden = True
        return batch

    def _batch(self, complete: bytes) -> Batch:
        if b"\r" in complete:
            complete = complete.replace(b"\r\n", b"\n")
        events, content = self._scan(complete)
        return Batch(complete, events, content)

    def _scan(self, data: bytes) -> tuple[list[Event] | None, int]:
        """The events of ``data`` (None: all plain) and its content chunks."""
        events: list[Event] = []
        content = 0
        rest = data
        attention = self._attention
        if attention is not None:
            first = _first_attention(data, attention)
            if first < 0:
                return None, self._count_plain(data)
            # the plain events before the first one needing attention pass as one block
            boundary = data.rfind(b"\n\n", 0, first)
            if boundary >= 0:
                cut = boundary + 2
                block = data[:cut]
                events.append((block, PLAIN))
                content = self._count_plain(block)
                rest = data[cut:]
        # From the first event needing attention on, every event is parsed: that is usually the
        # stream's tail (finish, usage, [DONE]), and parsing a small event costs less than
        # scanning it for markers first.
        parsed = self._parsed
        for part in rest.split(b"\n\n"):
            if not part:
                continue
            obj = parse_event(part)
            if obj.__class__ is dict:
                content += parsed(obj)
            events.append((part + b"\n\n", obj))
        return events, content

    def _count_plain(self, block: bytes) -> int:
        """The content chunks of whole events none of which holds an attention marker."""
        raise NotImplementedError

    def _parsed(self, obj: dict[str, Any]) -> int:
        """One parsed event: observed into the report; answers its content chunks."""
        raise NotImplementedError

    def _answer_in(self, batch: Batch) -> bool:
        """Whether ``batch`` (which has content) carries answer content, not only reasoning."""
        raise NotImplementedError


class SSEDecoder(EventTap):
    """OpenAI SSE in, OpenAI events out, each keeping the runtime's own bytes.

    Fast paths: a read that is one event shaped like the stream's learnt content
    :class:`Template` (a paced stream's) is counted before the framer and the batch logic see it;
    a run of such events is checked with a few scans; a block of whole events none of which holds
    an attention marker comes out as one raw block (PLAIN) with a content count. The events from
    the first one that needs attention on are parsed (all of them with ``parse_all``).

    Reasoning: until the stream's first answer content (:func:`shows_answer`), a batch whose
    content is all reasoning is marked ``hidden``; the check looks for the answer's keys in that
    batch only, and stops at the first answer content (one ``find`` in a stream without reasoning).
    """

    __slots__ = ("_parse_all", "_kind", "_markers", "_template", "_misses", "_answers", "_texts")

    # Reads in a row that no template carried before the decoder stops trying (a runtime that
    # writes something new into every chunk, e.g. per-token timings).
    MAX_MISSES = 8
    # Reads shorter than this take the marker scans: learning a template and splitting off the
    # events around its run cost more than scanning a few kilobytes (bench: the crossover of a
    # whole 16-64-token stream in one read is near 10 kB; a paced stream's reads are one event).
    TEMPLATE_MIN = 8192

    def __init__(self, observe: Callable[[dict[str, Any], Report], None], report: Report,
                 parse_all: bool = False, kind: str = "chat", attention: tuple[bytes, ...] = BASE_ATTENTION,
                 texts: bool = False) -> None:
        # EventTap's fields set here rather than by its __init__: one frame less per stream
        self._framer = EventFramer()
        self._attention = None if parse_all else attention
        self._observe = observe
        self._report = report
        self._texts = texts  # a run's texts cut out for the encoder (Batch.run)
        self._parse_all = parse_all
        self._kind = kind
        self._markers: tuple[tuple[bytes, ...], tuple[bytes, ...]] | None = None  # set by the first event
        self._template: Template | None = None
        self._misses = 0
        # a kind without reasoning fields: nothing to tell apart
        self._shown, self._answers = _reasoning(kind)

    def feed(self, data: bytes) -> Batch | None:
        template = self._template
        if template is not None and not self._framer.tail:
            # a paced stream's read: one whole event the template fits (it ends with a blank
            # line, so the framer would hand it back as it is)
            content = template.single(data)
            if content is not None:
                self._misses = 0
                return Batch(data, None, content, template.hidden)
        complete = self._framer.feed(data)  # EventTap.feed and _told, written out: once per read
        if not complete:
            return None
        batch = self._batch(complete)
        if not self._shown and batch.content:
            if self._answer_in(batch):
                self._shown = True
            else:
                batch.hidden = True
        return batch

    def _batch(self, complete: bytes) -> Batch:
        if b"\r" in complete:
            complete = complete.replace(b"\r\n", b"\n")
        if self._markers is None:  # a runtime writes all its JSON one way: compact or spaced
            spaced = _spaced(complete)
            if spaced is None:  # no JSON yet (a comment, a keep-alive): nothing to count
                events, content = self._scan(complete)
                return Batch(complete, events, content)
            self._markers = _text_markers(self._kind, spaced)
        run = None  # (start, end, content chunks) of a run of template events
        found = None  # and its texts, when the encoder asked for them
        if len(complete) >= self.TEMPLATE_MIN and not self._parse_all and self._misses < self.MAX_MISSES:
            template = self._template or self._learn(complete)
            if template is not None and self._texts and template.answer:
                cut = template.texts(complete)
                if cut is not None:
                    start, end, texts, joined = cut
                    run = start, end, len(texts) if all(texts) else len(texts) - texts.count(b"")
                    found = texts, joined
            elif template is not None:  # a reasoning run, or a format that relays the bytes
                run = template.run(complete)
            if run is None:
                self._template = None
                self._misses += 1
        if run is None:
            events, content = self._scan(complete)
            if events is None and content == 1 and len(complete) < self.TEMPLATE_MIN:
                self._learn_one(complete)
            return Batch(complete, events, content)
        self._misses = 0
        start, end, content = run
        if start == 0 and end == len(complete):
            return Batch(complete, None, content, run=None if found is None else Run(complete, *found))
        # the run passes as one plain block; a role chunk before it and the tail after it are scanned
        parts: list[Event] = []
        plain = True
        texts_run = None
        for piece, in_run in ((complete[:start], False), (complete[start:end], True), (complete[end:], False)):
            events = None
            if piece and not in_run:
                events, n = self._scan(piece)
                content += n
            elif in_run and found is not None:
                texts_run = Run(piece, *found)
            if events is not None:
                plain = False
                parts.extend(events)
            elif piece:
                parts.append((piece, PLAIN))
        # a run cut into texts stands as one event of its own (Batch.run)
        return Batch(complete, None if plain and texts_run is None else parts, content, run=texts_run)

    def _scan(self, data: bytes) -> tuple[list[Event] | None, int]:
        """:meth:`EventTap._scan` with this decoder's counting and observing written out (no
        call per parsed event): it runs on nearly every read."""
        markers = self._markers or _text_markers(self._kind, False)
        events: list[Event] = []
        content = 0
        rest = data
        attention = self._attention
        if attention is not None:
            first = _first_attention(data, attention)
            if first < 0:
                return None, _texts(data, markers)
            boundary = data.rfind(b"\n\n", 0, first)
            if boundary >= 0:
                cut = boundary + 2
                block = data[:cut]
                events.append((block, PLAIN))
                content = _texts(block, markers)
                rest = data[cut:]
        observe, report, kind = self._observe, self._report, self._kind
        for part in rest.split(b"\n\n"):
            if not part:
                continue
            obj = parse_event(part)
            if obj.__class__ is dict:
                observe(obj, report)
                content += content_count(obj, kind)
            events.append((part + b"\n\n", obj))
        return events, content

    def _answer_in(self, batch: Batch) -> bool:
        raw = batch.raw
        assert raw is not None
        if self._answers.search(raw) is not None:  # an answer text field, not empty
            return True
        return batch.events is not None and any(
            obj.__class__ is dict and shows_answer(obj) for _, obj in batch.events)

    def _learn_one(self, data: bytes) -> None:
        """From a small read the marker scans found to be plain with one content chunk: when it
        is one event, a template for the reads after it (a paced stream's). A template it did not
        fit counts a miss, and is replaced when this event can be one (a runtime changed
        ``created``), kept when it cannot (a quote in the text). Never with ``parse_all``: its
        scans always hand back events."""
        if self._misses >= self.MAX_MISSES or data.find(b"\n\n") != len(data) - 2:
            return
        assert self._markers is not None
        if self._template is not None:
            self._misses += 1
            if self._misses >= self.MAX_MISSES:  # every chunk differs (per-token timings): stop trying
                self._template = None
                return
        template = Template.learn(data[:-2], self._markers[0])
        if template is not None:
            self._template = template

    def _learn(self, data: bytes) -> Template | None:
        """A template from the first or second event of ``data`` (the first may be a role chunk)."""
        assert self._markers is not None and self._attention is not None  # never with parse_all
        start = 0
        for _ in range(2):
            end = data.find(b"\n\n", start)
            if end < 0:
                return None
            event = data[start:end]
            if not _needs_attention(event, self._attention):
                template = Template.learn(event, self._markers[0])
                if template is not None:
                    self._template = template
                    return template
            start = end + 2
        return None
