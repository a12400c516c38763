"""The golden transcripts in ``tests/data/<runtime>/``, which the fake runtimes replay
(:class:`bench.fake_runtime.ReplayRuntime`).

Each transcript follows the runtime's real wire format as its source writes it; every file's
source is cited in that directory's SOURCE.md. The main ones:
- vllm: vllm-project/vllm vllm/entrypoints/openai/chat_completion/serving.py, protocol.py,
  vllm/entrypoints/generate/base/protocol.py (PerRequestMetrics);
- sglang: sgl-project/sglang python/sglang/srt/entrypoints/openai/serving_chat.py, protocol.py;
- llamacpp: real captures of llama-server b1-0c1e570 (tests/data/llamacpp, SOURCE.md);
- ollama: ollama/ollama api/types.go, server/routes.go;
- mlx: ml-explore/mlx-lm mlx_lm/server.py;
- trtllm: NVIDIA/TensorRT-LLM tensorrt_llm/serve/openai_server.py, openai_protocol.py,
  postprocess_handlers.py;
- llama-cpp-python: abetlen/llama-cpp-python llama_cpp/server/app.py, errors.py,
  llama_cpp/llama_chat_format.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.fake_runtime import ReplayRuntime

DATA = Path(__file__).parent / "data"
RUNTIMES = ("vllm", "sglang", "llamacpp", "ollama", "mlx", "trtllm", "llama-cpp-python")


def meta(runtime: str) -> dict[str, Any]:
    return json.loads((DATA / runtime / "meta.json").read_text())


def replay(runtime: str, **kw: Any) -> ReplayRuntime:
    """A fake ``runtime`` replaying its transcripts (not started)."""
    return ReplayRuntime(DATA / runtime, **kw)
