"""The measured scenarios: what is sent, how fast the fake answers, at what concurrency."""

from __future__ import annotations

from dataclasses import dataclass, replace

from bench.fake_runtime import event_count
from bench.loadgen import DONE, MESSAGE_STOP, PATHS, request_body

PACED = 50.0  # tokens/s per stream: a plausible decode rate for one stream of a served model


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    stream: bool
    tokens: int
    rate: float  # fake runtime pacing, tokens/s per stream; 0 = all at once
    concurrency: int
    backends: int = 1
    seconds: float = 1.0  # a segment starts no request after this …
    requests: int = 100_000  # … nor more than this many
    grace: float = 30.0  # requests still running this long after `seconds` are cancelled (errors)
    kind: str = "chat"  # or "completions", or "messages": Anthropic's API, translated to chat
    tpc: int = 1  # tokens per chunk
    ramp: float = 0.0  # workers start spread over this many seconds
    read_pause: float = 0.0  # the client's pause between reads after the first content (loadgen)

    @property
    def label(self) -> str:
        mode = "stream" if self.stream else "unary"
        pace = "at once" if self.rate <= 0 else f"{self.rate:g} tok/s"
        backends = f", {self.backends} backends" if self.backends > 1 else ""
        return f"{mode} {self.tokens} tok, {pace}, c={self.concurrency}{backends}"

    @property
    def long_lived(self) -> bool:
        """One paced stream per worker for the whole segment (the 256-streams scenario)."""
        return self.requests == self.concurrency

    @property
    def path(self) -> str:
        return PATHS[self.kind]

    @property
    def end(self) -> bytes:
        """What a stream of this scenario ends with."""
        return MESSAGE_STOP if self.kind == "messages" else DONE

    @property
    def chunks(self) -> int | None:
        """SSE events the client receives per request ([DONE] included); None when unary. For
        /v1/messages: the events the runtime sends, each rewritten in Anthropic's format."""
        if not self.stream:
            return None
        return event_count("completions" if self.kind == "completions" else "chat", self.tokens, self.tpc, False)

    def body(self) -> bytes:
        return request_body(self.kind, self.tokens, stream=self.stream, rate=self.rate, tpc=self.tpc)

    def warmup(self) -> Scenario:
        """One short request per worker, all at once: opens every connection the segment will use
        (client → proxy → backend)."""
        return replace(self, tokens=16, rate=0.0, seconds=1.0, requests=self.concurrency, grace=30.0,
                       ramp=0.0, read_pause=0.0)


def _streams(concurrency: int, tokens: int, ramp: float) -> Scenario:
    """Long-lived paced streams, one per worker, starting spread over ``ramp`` seconds: most
    streams begin while many others are being relayed, and TTFT shows what that costs them."""
    duration = tokens / PACED
    return Scenario(f"stream-{tokens}-paced-c{concurrency}", True, tokens, PACED, concurrency,
                    seconds=ramp + 1.0, requests=concurrency, grace=2 * duration + 10, ramp=ramp,
                    read_pause=0.1)


def default_scenarios(scale: float = 1.0) -> list[Scenario]:
    s = 1.0 * scale
    return [
        Scenario("unary-16-c1", False, 16, 0, 1, seconds=s),
        Scenario("unary-16-c16", False, 16, 0, 16, seconds=s),
        Scenario("unary-16-c64", False, 16, 0, 64, seconds=s),
        Scenario("unary-512-c16", False, 512, 0, 16, seconds=s),
        Scenario("stream-16-c1", True, 16, 0, 1, seconds=s),
        Scenario("stream-16-c16", True, 16, 0, 16, seconds=s),
        Scenario("stream-16-c64", True, 16, 0, 64, seconds=s),
        Scenario("stream-512-c16", True, 512, 0, 16, seconds=s),
        Scenario("stream-16-paced-c64", True, 16, PACED, 64, seconds=s),
        _streams(256, 512, ramp=1.5),
        Scenario("unary-16-c64-8be", False, 16, 0, 64, backends=8, seconds=s),
        Scenario("stream-16-c64-8be", True, 16, 0, 64, backends=8, seconds=s),
        # the Anthropic Messages API translated, on the same fake runtime as stream-16/512-c16
        Scenario("messages-stream-16-c16", True, 16, 0, 16, seconds=s, kind="messages"),
        Scenario("messages-stream-512-c16", True, 512, 0, 16, seconds=s, kind="messages"),
    ]


def responses_scenarios(scale: float = 1.0) -> list[Scenario]:
    """OpenAI Responses streams, translated by mtproxy to chat completions on the same fake
    runtime (bench/responses.py, bench/instructions.py): mtproxy only, no direct or floor path."""
    s = 1.0 * scale
    return [Scenario("responses-stream-16-c16", True, 16, 0, 16, seconds=s, kind="responses"),
            Scenario("responses-stream-512-c16", True, 512, 0, 16, seconds=s, kind="responses")]


def quick_scenarios(scale: float = 1.0) -> list[Scenario]:
    s = 0.5 * scale
    return [
        Scenario("unary-16-c1", False, 16, 0, 1, seconds=s),
        Scenario("unary-16-c16", False, 16, 0, 16, seconds=s),
        Scenario("stream-16-c1", True, 16, 0, 1, seconds=s),
        Scenario("stream-16-c16", True, 16, 0, 16, seconds=s),
        Scenario("stream-512-c16", True, 512, 0, 16, seconds=s),
        _streams(256, 32, ramp=0.5),
        Scenario("unary-16-c64-8be", False, 16, 0, 64, backends=8, seconds=s),
    ]
