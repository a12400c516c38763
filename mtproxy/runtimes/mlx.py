"""MLX-LM's mlx_lm.server.

Source: ml-explore/mlx-lm mlx_lm/server.py.
- /health, /v1/models, /v1/completions, /v1/chat/completions; no version endpoint, no metrics,
  no draft statistics;
- usage in streams only with stream_options.include_usage;
- errors are plain strings: {"error": "<text>"}.
- neither Anthropic Messages nor OpenAI Responses (native_apis {}): mlx_lm/server.py routes none;
  requests for them (ml-explore/mlx-lm#1068, PR #1207) were open in 2026 (docs/client-apis-wire.md §3.1).
"""

from __future__ import annotations

from .openai_compat import OpenAICompatible


class MLX(OpenAICompatible):
    name = "mlx"
    health_path = "/health"
