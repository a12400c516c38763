"""llama-cpp-python's server (``python -m llama_cpp.server``).

Source: abetlen/llama-cpp-python llama_cpp/server/app.py, llama_cpp/server/errors.py.
- no /health; /v1/models takes the model lock (Depends(get_llama_proxy)), and with the server's
  default interrupt_requests=True a request arriving there cuts a running stream short, and waits
  behind a running request: liveness is probed at /openapi.json (lock-free), and models are
  discovered only when the backend first appears or comes back;
- version: GET /openapi.json → info.version;
- streams never carry usage (stream_options is ignored): token counts stay unknown;
- accepts any `model` name.
- neither Anthropic Messages nor OpenAI Responses (native_apis {}): app.py routes
  /v1/{completions,chat/completions,embeddings,models} only (0.3.36; docs/client-apis-wire.md §3.1).
"""

from __future__ import annotations

from typing import Any

from ..errors import UpstreamError, normalise_upstream_error
from .openai_compat import OpenAICompatible


class LlamaCppPython(OpenAICompatible):
    name = "llama-cpp-python"
    health_path = "/openapi.json"
    version_path = "/openapi.json"
    rediscover = False

    def version_from(self, data: Any) -> str | None:
        info = data.get("info") if isinstance(data, dict) else None
        version = info.get("version") if isinstance(info, dict) else None
        return version if isinstance(version, str) else None

    def upstream_error(self, status: int, body: bytes) -> UpstreamError:
        """Its server answers a request that fails validation with 500 and pydantic's error list
        (llama_cpp/server/errors.py); that is the client's mistake, so it becomes a 400."""
        err = normalise_upstream_error(status, body)
        # "[{'type': …, 'loc': ('body', …" (older FastAPI) or "1 validation error:\n  {'type': …"
        if status == 500 and "'loc': ('body'" in err.message and (
                err.message.startswith("[{'type':") or "validation error" in err.message):
            return UpstreamError(f"Invalid request: {err.message}", status=400, type_="invalid_request_error")
        return err
