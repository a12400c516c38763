"""MLX-LM's mlx_lm.server.

Source: ml-explore/mlx-lm mlx_lm/server.py.
- /health, /v1/models, /v1/completions, /v1/chat/completions; no version endpoint, no metrics,
  no draft statistics;
- usage in streams only with stream_options.include_usage;
- errors are plain strings: {"error": "<text>"}.
"""

from __future__ import annotations

from .openai_compat import OpenAICompatible


class MLX(OpenAICompatible):
    name = "mlx"
    health_path = "/health"
