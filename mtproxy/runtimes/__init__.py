"""Runtime adapters: one module per runtime, all behind :class:`~.base.Runtime`.

``ADAPTERS`` is the one list of runtimes: the config's ``runtime:`` names come from it, and each
adapter points at its row of the MTP registry (``mtp_support``).
May import: stream/, wire, upstream, errors, mtp/, embedded (the layers below).
"""

from __future__ import annotations

from ..stream.events import Report
from .base import BackendHTTP, Probe, Runtime
from .llama_cpp_python import LlamaCppPython
from .llamacpp import LlamaCpp
from .mlx import MLX
from .ollama import Ollama
from .openai_compat import OpenAICompatible
from .sglang import SGLang
from .trtllm import TensorRTLLM
from .vllm import VLLM

ADAPTERS: dict[str, type[Runtime]] = {
    cls.name: cls
    for cls in (VLLM, SGLang, LlamaCpp, Ollama, MLX, TensorRTLLM, LlamaCppPython, OpenAICompatible)
}


def runtime_for(name: str) -> Runtime:
    return ADAPTERS[name]()


__all__ = ["ADAPTERS", "BackendHTTP", "Probe", "Report", "Runtime", "runtime_for"]
