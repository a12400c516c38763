"""SGLang.

Source: sgl-project/sglang python/sglang/srt/entrypoints/http_server.py (/health,
/server_info), srt/entrypoints/openai/protocol.py (flat ErrorResponse {"object":"error",
"message","type","param","code"}).
- version: GET /server_info → "version" (with the server args, e.g. speculative_algorithm,
  and internal_states[].avg_spec_accept_length);
- usage in streams only with stream_options.include_usage.
"""

from __future__ import annotations

from .openai_compat import OpenAICompatible


class SGLang(OpenAICompatible):
    name = "sglang"
    health_path = "/health"
    version_path = "/server_info"
