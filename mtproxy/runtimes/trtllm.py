"""TensorRT-LLM's trtllm-serve.

Source: NVIDIA/TensorRT-LLM tensorrt_llm/serve/openai_server.py (/health, /version),
tensorrt_llm/serve/openai_protocol.py (request models with extra="forbid": an unknown field is
a 400; flat ErrorResponse {"object":"error", …}).
- per choice `avg_decoded_tokens_per_iter`: tokens per decode iteration, > 1 with MTP;
- usage in streams with stream_options.include_usage.
- native_apis {}: tensorrt_llm/serve/anthropic_adapter.py, anthropic_protocol.py and
  responses_utils.py exist in the repository, but which routes they serve and since which
  release is not verified (docs/client-apis-wire.md §3.1): every request is translated.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

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


class TensorRTLLM(OpenAICompatible):
    name = "trtllm"
    observers = (USAGE, Observer("avg_decoded_tokens_per_iter", observe_per_iter))  # tokens per decode step
    health_path = "/health"
    version_path = "/version"

    def __init__(self) -> None:
        self.accepted_fields = accepted_fields()
