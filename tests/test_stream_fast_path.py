"""The stream decoder's fast paths (content template, marker scans) against parsing every event:
same bytes to the client, same content count, same report, for streams of every shape cut into
reads of every size: reads shorter than ``SSEDecoder.TEMPLATE_MIN`` take the marker scans (and,
one event each, the template learnt from them), longer ones the template's run, which the long
runs of content chunks below reach."""

from __future__ import annotations

import json

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from mtproxy.front.openai import OpenAIStream
from mtproxy.runtimes import Report, runtime_for
from mtproxy.stream.events import PLAIN
from mtproxy.stream.tap import SSEDecoder, Template, parse_event
from mtproxy.wire import CHAT, COMPLETIONS, from_payload

TEXT = st.one_of(
    st.sampled_from(["", "Hello", " world", 'say "hi"', "back\\slash", "line\nbreak", "usage", '"usage"',
                     "[DONE]", "event: error", "content", '"content":"', "\u00e9t\u00e9", "\U0001f600", "}]}"]),
    st.text(max_size=12),
)


def chunk(created: int, delta: dict | None = None, finish: str | None = None, kind=CHAT, **extra) -> dict:
    if kind is COMPLETIONS:
        choice = {"index": 0, "text": (delta or {}).get("content", ""), "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    else:
        choice = {"index": 0, "delta": delta if delta is not None else {}, "logprobs": None, "finish_reason": finish}
        obj = "chat.completion.chunk"
    return {"id": "cmpl-1", "object": obj, "created": created, "model": "m", "choices": [choice], **extra}


@st.composite
def streams(draw, kind=CHAT):
    created = 1_700_000_000
    events: list = [": keep-alive"] if draw(st.booleans()) else []
    if kind is CHAT:
        events.append(chunk(created, {"role": "assistant", "content": ""}))
    for _ in range(draw(st.integers(0, 40))):
        what = draw(st.sampled_from(["content"] * 6 + ["reasoning", "tool", "tick", "keepalive", "empty",
                                                        "error", "null_usage", "run"]))
        if what == "run":  # 120 plain content chunks, 15-20 kB: longer than TEMPLATE_MIN
            texts = draw(st.lists(TEXT, min_size=1, max_size=4))
            events += [chunk(created, {"content": texts[j % len(texts)]}, kind=kind) for j in range(120)]
        elif what == "content":
            events.append(chunk(created, {"content": draw(TEXT)}, kind=kind))
        elif what == "reasoning" and kind is CHAT:
            events.append(chunk(created, {"reasoning_content": draw(TEXT)}))
        elif what == "tool" and kind is CHAT:
            events.append(chunk(created, {"tool_calls": [{"index": 0, "function": {"arguments": draw(TEXT)}}]}))
        elif what == "tick":
            created += 1
        elif what == "keepalive":
            events.append(": keep-alive")
        elif what == "empty":
            events.append(chunk(created, {"content": ""}, kind=kind))
        elif what == "error":
            events.append({"error": {"message": draw(TEXT), "type": "internal"}})
        elif what == "null_usage":
            events.append(chunk(created, {"content": draw(TEXT)}, kind=kind, usage=None))
    events.append(chunk(created, {}, "stop", kind=kind))
    events.append({"id": "cmpl-1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9}})
    spaced = draw(st.booleans())
    out = []
    for e in events:
        if isinstance(e, str):
            out.append(e.encode())
        else:
            out.append(b"data: " + (json.dumps(e).encode() if spaced else orjson.dumps(e)))
    out.append(b"data: [DONE]")
    return b"\n\n".join(out) + b"\n\n"


def decode(raw: bytes, cuts: list[int], parse_all: bool, kind=CHAT, texts: bool = False):
    """(report, batches, bytes sent to the client, finished) of ``raw`` read in pieces cut at ``cuts``."""
    req = from_payload({"model": "m", "stream": True}, kind)
    report = Report()
    decoder = runtime_for("vllm").stream_decoder(req, report, parse_all=parse_all, texts=texts)
    encoder = OpenAIStream(strip_usage=True)
    batches, bounds = [], sorted({0, len(raw), *(c % (len(raw) + 1) for c in cuts)})
    for a, b in zip(bounds, bounds[1:]):
        batches.append(decoder.feed(raw[a:b]))
    batches.append(decoder.flush())
    batches = [b for b in batches if b is not None]
    sent = b"".join(encoder.encode(b) for b in batches)
    return report, batches, sent, encoder.finished


def reads(raw: bytes, cuts: list[int]) -> list[list[int]]:
    """Ways to cut ``raw`` into reads: at ``cuts``; all of it in one read; one event per read (a
    paced stream's); reads a little longer than ``TEMPLATE_MIN``, cut mid-event."""
    events, at = [], raw.find(b"\n\n")
    while at >= 0:
        events.append(at + 2)
        at = raw.find(b"\n\n", at + 2)
    longer = SSEDecoder.TEMPLATE_MIN * 9 // 8
    return [cuts, [], events, list(range(longer, len(raw), longer))]


def check(raw: bytes, cuts: list[int], kind=CHAT) -> None:
    for plan in reads(raw, cuts):
        full_report, full, full_sent, full_done = decode(raw, plan, True, kind)
        for texts in (False, True):
            fast_report, fast, fast_sent, fast_done = decode(raw, plan, False, kind, texts)
            assert b"".join(b.raw for b in fast) == raw
            assert fast_sent == full_sent
            assert fast_done == full_done
            assert fast_report == full_report
            assert [b.content for b in fast] == [b.content for b in full]
            for batch in fast:
                assert batch.run is None or texts
                if batch.run is not None:
                    check_run(batch, kind)


def check_run(batch, kind=CHAT) -> None:
    """A batch's run of content chunks cut into its texts: a plain block of the batch, each of
    its events the template around the text it was cut into, nothing else in it."""
    run = batch.run
    assert run.data is batch.raw if batch.events is None else \
        [obj for data, obj in batch.events if data is run.data] == [PLAIN]
    events = [parse_event(e) for e in run.data.split(b"\n\n") if e]
    field = "text" if kind is COMPLETIONS else "content"
    want = [e["choices"][0].get("delta", e["choices"][0])[field] for e in events]
    assert [orjson.loads(b'"' + t + b'"') for t in run.texts] == want
    assert run.joined == b"".join(run.texts) and b'"' not in run.joined
    assert batch.content >= sum(1 for t in run.texts if t)


@settings(max_examples=300, deadline=None)
@given(streams(), st.lists(st.integers(0, 1 << 16), max_size=6))
def test_chat_fast_paths_agree_with_parsing_everything(raw, cuts):
    check(raw, cuts)


@settings(max_examples=100, deadline=None)
@given(streams(COMPLETIONS), st.lists(st.integers(0, 1 << 16), max_size=6))
def test_completions_fast_paths_agree_with_parsing_everything(raw, cuts):
    check(raw, cuts, COMPLETIONS)


def test_a_run_of_content_chunks_is_counted_without_parsing():
    """A short read (the marker scans), then long ones (a template learnt from the first of them
    carries them): the events pass as one plain block each, every chunk with a text counted."""
    events = [b"data: " + orjson.dumps(chunk(1, {"content": t})) + b"\n\n" for t in ["a", "", "b c", "d"] * 200]
    pieces = [b"".join(events[:4]), b"".join(events[4:100]), b"".join(events[100:])]
    assert len(pieces[0]) < SSEDecoder.TEMPLATE_MIN <= len(pieces[1])
    req = from_payload({"model": "m", "stream": True}, CHAT)
    decoder = runtime_for("vllm").stream_decoder(req, Report())
    batches = [decoder.feed(piece) for piece in pieces]
    assert [(b.raw, b.events, b.content) for b in batches] == [(p, None, n) for p, n in zip(pieces, [3, 72, 525])]


def test_a_run_is_cut_into_its_texts_for_a_format_that_rewrites_them():
    """Asked for texts (a translating format), the decoder hands a long run's texts with the
    batch, still escaped, with the role chunk before the run and the tail after it as events;
    not asked, it hands none. A run with a quote in a text is counted by the marker scans, uncut."""
    texts = ["a", "", "b\\c", "\u00e9\U0001f98a", "d\n", "\t"] * 100
    role = b"data: " + orjson.dumps(chunk(1, {"role": "assistant", "content": ""})) + b"\n\n"
    run = b"".join(b"data: " + orjson.dumps(chunk(1, {"content": t})) + b"\n\n" for t in texts)
    tail = b"data: " + orjson.dumps(chunk(1, {}, "stop")) + b"\n\ndata: [DONE]\n\n"
    req = from_payload({"model": "m", "stream": True}, CHAT)
    for data in (run, role + run, role + run + tail):
        batch = runtime_for("vllm").stream_decoder(req, Report(), texts=True).feed(data)
        assert batch is not None and batch.run is not None and batch.content == 500 and not batch.hidden
        # the run is the batch, or one event of it beside the others
        assert batch.run.data is data if data is run else b"".join(e for e, _ in batch.events) == data
        assert [orjson.loads(b'"' + t + b'"') for t in batch.run.texts] == texts
        check_run(batch)
        assert runtime_for("vllm").stream_decoder(req, Report()).feed(data).run is None
    thinking = b"".join(b"data: " + orjson.dumps(chunk(1, {"reasoning_content": t})) + b"\n\n" for t in texts)
    batch = runtime_for("vllm").stream_decoder(req, Report(), texts=True).feed(thinking)
    assert batch.run is None and batch.content == 500 and batch.hidden  # reasoning is no message text
    assert batch.events is None  # but a run all the same (Template.run): one block
    quoted = run + b"data: " + orjson.dumps(chunk(1, {"content": 'say "hi"'})) + b"\n\n" + run
    batch = runtime_for("vllm").stream_decoder(req, Report(), texts=True).feed(quoted)
    assert batch.run is None and batch.events is None and batch.content == 1001


def test_the_template_refuses_what_it_cannot_vouch_for():
    event = b"data: " + orjson.dumps(chunk(1, {"content": "x"}))
    template = Template.learn(event, (b'content":"',))
    assert template is not None
    line = event + b"\n\n"
    assert template.run(line * 3) == (0, 3 * len(line), 3)
    quoted = b"data: " + orjson.dumps(chunk(1, {"content": 'a"b'})) + b"\n\n"
    assert template.run(line + quoted + line) is None  # a quote in a text: the marker scans decide
    tool = b"data: " + orjson.dumps(chunk(1, {"content": "a", "tool_calls": []})) + b"\n\n"
    assert template.run(line + tool + line) is None
    assert Template.learn(b"data: " + orjson.dumps(chunk(1, {"content": 'a\\"b'})), (b'content":"',)) is None
    assert Template.learn(b"data: " + orjson.dumps({"a": {"content": "x"}, "b": {"content": "y"}}),
                          (b'content":"',)) is None


def test_a_paced_stream_read_event_by_event_is_counted_right():
    """One event per read (a paced stream): after the first plain content chunk, a template counts
    the reads it fits; a quote in a text, a new `created` and the stream's tail it does not fit
    (the marker scans count them, and learn the template again)."""
    events = [chunk(1, {"role": "assistant", "content": ""})]
    events += [chunk(1, {"content": t}) for t in ["a", "b", "", "c", 'q"uote', "d", "e"]]
    events += [chunk(2, {"content": t}) for t in ["f", "g", "h"]]
    events += [chunk(2, {}, "stop"), {"id": "cmpl-1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 11}}]
    lines = [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
    raw = b"".join(lines)
    cuts = [sum(len(line) for line in lines[:i]) for i in range(1, len(lines))]
    check(raw, cuts)
    report, batches, _, done = decode(raw, cuts, False)
    assert done and report.completion_tokens == 11
    assert [b.raw for b in batches] == lines
    assert [b.content for b in batches] == [0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
