"""mtproxy: one OpenAI-compatible URL for local LLM runtimes, MTP-aware and measured."""

__version__ = "0.1.0"
