"""speed.py: the peak-EWMA of one backend's speed, by its stream and non-streaming paths."""

from math import exp

from mtproxy.speed import Speed


def test_a_stream_updates_its_own_estimates_as_a_peak_ewma():
    s = Speed()
    s.stream(10.0, 30.0, 0.2, 0.05, None)  # the first observation is taken as it is
    assert (s.ttft, s.per_token, s.unary, s.per_step, s.at, s.count) == (0.2, 0.05, None, None, 10.0, 1)
    s.stream(13.0, 30.0, 0.1, 0.08, 1.5)  # faster TTFT: pulled down by the time weight; slower per token: at once
    w = exp(-3.0 / 30.0)
    assert s.ttft == 0.2 * w + 0.1 * (1.0 - w)
    assert s.per_token == 0.08
    assert s.per_step == 1.5 and s.unary is None and s.at == 13.0 and s.count == 2
    s.stream(14.0, 30.0, 0.3, None, 1.0)  # no time per token measured: that estimate stands
    w = exp(-1.0 / 30.0)
    assert s.ttft == 0.3 and s.per_token == 0.08 and s.per_step == 1.5 * w + 1.0 * (1.0 - w)


def test_a_non_streaming_answer_updates_only_its_own_estimate():
    s = Speed()
    s.stream(1.0, 30.0, 0.2, 0.05, 2.0)
    s.unary_answer(4.0, 30.0, 0.04, None)
    assert (s.ttft, s.per_token, s.unary, s.per_step, s.count) == (0.2, 0.05, 0.04, 2.0, 2)
    s.unary_answer(7.0, 30.0, 0.02, 1.0)
    w = exp(-3.0 / 30.0)
    assert s.unary == 0.04 * w + 0.02 * (1.0 - w) and s.per_step == 2.0 * w + 1.0 * (1.0 - w)
    assert Speed().seconds(10) == 0.0 and s.seconds(10) == 0.2 + 10 * 0.05
