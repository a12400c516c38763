"""TensorRT-LLM's trtllm-serve.

Source: NVIDIA/TensorRT-LLM tensorrt_llm/serve/openai_server.py (/health, /version),
tensorrt_llm/serve/openai_protocol.py (request models with extra="forbid": an unknown field is
a 400; flat ErrorResponse {"object":"error", …}).
- per choice `avg_decoded_tokens_per_iter`: tokens per decode iteration, > 1 with MTP (the mean
  acceptance length); no drafted or accepted counts, steps or positions per request (those are
  engine-wide, in /metrics `specDecodingStats`);
- usage in streams with stream_options.include_usage.
- GET /metrics (tensorrt_llm/serve/openai_server.py get_iteration_stats): a JSON list of the
  iteration stats since the last read, each entry handed out once ({"iter", "iterLatencyMS",
  "gpuMemUsage", "numActiveRequests", "inflightBatchingStats": {...}, "kvCacheStats": {...},
  "specDecodingStats": {"numDraftTokens", "numAcceptedTokens", ...}, "timestamp", ...}; fields per
  tests/unittest/llmapi/apps/_test_openai_metrics.py), with enable_iter_perf_stats; converted to
  gauges by :func:`iteration_gauges`.
- native_apis {}: tensorrt_llm/serve/anthropic_adapter.py, anthropic_protocol.py and
  responses_utils.py exist in the repository, but which routes they serve and since which
  release is not verified (docs/client-apis-wire.md §3.1): every request is translated.
"""

from __future__ import annotations

import functools
import json
import math
import re
from importlib import resources
from typing import Any

import orjson

from ..stream.events import Report
from ..stream.tap import Observer
from .base import as_float
from .openai_compat import USAGE, OpenAICompatible


@functools.cache
def accepted_fields() -> dict[str, frozenset[str]]:
    """The request fields trtllm-serve accepts per endpoint kind (package data
    trtllm_fields.json), read on first use and kept."""
    data = json.loads(resources.files(__package__).joinpath("trtllm_fields.json").read_text())
    return {"chat": frozenset(data["chat"]), "completions": frozenset(data["completions"]),
            "embeddings": frozenset(data.get("embeddings", ("model", "input")))}


def observe_per_iter(obj: dict[str, Any], report: Report) -> None:
    """``avg_decoded_tokens_per_iter`` of a choice: the runtime's own tokens per decode step."""
    for choice in obj.get("choices") or ():
        per_iter = as_float(choice.get("avg_decoded_tokens_per_iter")) if isinstance(choice, dict) else None
        if per_iter is not None:
            report.tokens_per_step = per_iter


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_]")
ITERATION_PREFIX = "trtllm_iteration_"


def _snake(key: str) -> str:
    return _NOT_NAME.sub("_", _CAMEL.sub("_", key)).lower()


def _numbers(obj: dict[str, Any], path: tuple[str, ...], out: dict[str, tuple[str, float]]) -> None:
    for key, value in obj.items():
        if isinstance(value, dict):
            _numbers(value, (*path, key), out)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            name = ITERATION_PREFIX + "_".join(_snake(k) for k in (*path, key))
            out.setdefault(name, (".".join((*path, key)), float(value)))


def iteration_gauges(body: bytes) -> str:
    """trtllm-serve's JSON ``/metrics`` as Prometheus gauges: every number of the latest
    iteration in the read, nested keys joined (``kvCacheStats.freeNumBlocks`` ->
    ``trtllm_iteration_kv_cache_stats_free_num_blocks``; ``iterLatencyMS`` ->
    ``trtllm_iteration_iter_latency_ms``); strings, lists and booleans are left out. The runtime
    hands each entry out once, so a read with no iteration since the last has none of these, only
    ``trtllm_iterations_read 0``. Raises ValueError when the body is not a JSON list of objects."""
    stats = orjson.loads(body)
    if not isinstance(stats, list) or not all(isinstance(entry, dict) for entry in stats):
        raise ValueError("TensorRT-LLM /metrics: not a JSON list of iteration stats")
    lines = ["# HELP trtllm_iterations_read Iteration stats entries in this read of /metrics.\n",
             "# TYPE trtllm_iterations_read gauge\n", f"trtllm_iterations_read {len(stats)}\n"]
    numbers: dict[str, tuple[str, float]] = {}
    if stats:
        _numbers(stats[-1], (), numbers)
    for name, (field, value) in numbers.items():
        lines.append(f"# HELP {name} TensorRT-LLM iteration stats {field}, latest iteration.\n"
                     f"# TYPE {name} gauge\n{name} {value!r}\n")
    return "".join(lines)


class TensorRTLLM(OpenAICompatible):
    name = "trtllm"
    observers = (USAGE, Observer("avg_decoded_tokens_per_iter", observe_per_iter))  # tokens per decode step
    health_path = "/health"
    version_path = "/version"
    metrics_path = "/metrics"  # JSON iteration stats (its Prometheus text is /prometheus/metrics)

    def __init__(self) -> None:
        self.accepted_fields = accepted_fields()

    def exposition(self, body: bytes) -> str:
        return iteration_gauges(body)
