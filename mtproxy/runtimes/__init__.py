"""Runtime adapters: one object per runtime name, all behind :class:`Runtime`."""

from __future__ import annotations

from .base import BackendHTTP, OpenAICompatible, Probe, Runtime

# Health endpoints from ../shared/reference/runtimes.md §3–4. llama-cpp-python's server has no
# /health (its /v1/models answers instead); a generic OpenAI-compatible server may not have one.
# Ollama answers OpenAI requests under /v1 and liveness at /api/version.
_ADAPTERS: dict[str, Runtime] = {
    "vllm": OpenAICompatible("vllm"),
    "sglang": OpenAICompatible("sglang"),
    "llamacpp": OpenAICompatible("llamacpp"),
    "ollama": OpenAICompatible("ollama", health_path="/api/version"),
    "mlx": OpenAICompatible("mlx"),
    "trtllm": OpenAICompatible("trtllm"),
    "llama-cpp-python": OpenAICompatible("llama-cpp-python", health_path=None),
    "openai": OpenAICompatible("openai", health_path=None),
}


def runtime_for(name: str) -> Runtime:
    return _ADAPTERS[name]


__all__ = ["BackendHTTP", "Probe", "Runtime", "runtime_for"]
