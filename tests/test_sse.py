from mtproxy.stream.sse import EventFramer, error_event


def test_framer_passes_whole_events_and_holds_partial_ones():
    f = EventFramer()
    assert f.feed(b"data: 1\n\n") == b"data: 1\n\n"
    assert f.feed(b"data: 2\n\ndata: 3") == b"data: 2\n\n"
    assert f.feed(b"\n") == b""
    assert f.feed(b"\ndata: 4\n\n") == b"data: 3\n\ndata: 4\n\n"
    assert f.flush() == b""


def test_framer_handles_crlf_and_a_missing_final_blank_line():
    f = EventFramer()
    assert f.feed(b"data: 1\r\n\r\ndata: [DONE]") == b"data: 1\r\n\r\n"
    assert f.flush() == b"data: [DONE]\n\n"


def test_error_event_ends_the_stream():
    assert error_event({"error": {"message": "x"}}) == (
        b'event: error\ndata: {"error":{"message":"x"}}\n\ndata: [DONE]\n\n')
