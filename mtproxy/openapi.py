"""The proxy's own OpenAPI description (``GET /openapi.json``).

Request schemas name what the proxy itself checks (``model``, ``stream``, ``stream_options``)
and leave the rest open, as the proxy is lenient and passes unknown fields to the runtime. The
hostile-input tests generate requests from this document.
"""

from __future__ import annotations

from typing import Any

from . import __version__

_ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}
_MESSAGE = {"type": "object", "required": ["role", "content"], "properties": {
    "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
    "content": {"type": ["string", "array", "null"]}}}
_COMMON = {
    "model": {"type": "string", "minLength": 1},
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    "max_tokens": {"type": "integer"},
    "temperature": {"type": "number"},
    "top_p": {"type": "number"},
    "stop": {"type": ["string", "array"]},
    "seed": {"type": "integer"},
}
CHAT = {"type": "object", "required": ["model", "messages"], "additionalProperties": True,
        "properties": {**_COMMON, "messages": {"type": "array", "items": _MESSAGE}}}
COMPLETION = {"type": "object", "required": ["model", "prompt"], "additionalProperties": True,
              "properties": {**_COMMON, "prompt": {"type": ["string", "array"]}}}
EMBEDDING = {"type": "object", "required": ["model", "input"], "additionalProperties": True,
             "properties": {"model": _COMMON["model"], "input": {"type": ["string", "array"]},
                            "dimensions": {"type": "integer"}}}
OLLAMA_CHAT = {"type": "object", "required": ["model"], "additionalProperties": True, "properties": {
    "model": {"type": "string", "minLength": 1}, "messages": {"type": "array", "items": _MESSAGE},
    "stream": {"type": "boolean"}, "options": {"type": "object"}, "format": {"type": ["string", "object"]}}}
OLLAMA_GENERATE = {"type": "object", "required": ["model"], "additionalProperties": True, "properties": {
    "model": {"type": "string", "minLength": 1}, "prompt": {"type": "string"}, "system": {"type": "string"},
    "raw": {"type": "boolean"}, "stream": {"type": "boolean"}, "options": {"type": "object"}}}

_ITEM = {"type": "object", "additionalProperties": True, "properties": {
    "type": {"type": "string", "enum": ["message", "function_call", "function_call_output", "reasoning"]},
    "role": {"type": "string", "enum": ["user", "assistant", "system", "developer"]},
    "content": {"type": ["string", "array"]}, "call_id": {"type": "string"}, "name": {"type": "string"},
    "arguments": {"type": "string"}, "output": {"type": ["string", "array"]}}}
RESPONSES = {"type": "object", "required": ["model", "input"], "additionalProperties": True, "properties": {
    "model": _COMMON["model"], "input": {"type": ["string", "array"], "items": _ITEM},
    "instructions": {"type": "string"}, "stream": {"type": "boolean"}, "store": {"type": "boolean"},
    "previous_response_id": {"type": "string"}, "max_output_tokens": {"type": "integer"},
    "temperature": {"type": "number"}, "top_p": {"type": "number"}, "parallel_tool_calls": {"type": "boolean"},
    "tools": {"type": "array", "items": {"type": "object", "properties": {
        "type": {"type": "string", "enum": ["function"]}, "name": {"type": "string"},
        "parameters": {"type": "object"}, "strict": {"type": "boolean"}}}},
    "tool_choice": {"type": ["string", "object"]},
    "text": {"type": "object", "properties": {"format": {"type": "object", "properties": {
        "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]}}}}},
    "reasoning": {"type": "object", "properties": {"effort": {"type": ["string", "null"]}}},
    "metadata": {"type": "object"}}}
_ANTHROPIC_ERROR = {
    "type": "object", "required": ["type", "error"],
    "properties": {"type": {"type": "string", "enum": ["error"]}, "error": {
        "type": "object", "required": ["type", "message"],
        "properties": {"type": {"type": "string"}, "message": {"type": "string"}}}},
}
_BLOCKS = {"type": ["string", "array"], "items": {"type": "object", "required": ["type"], "properties": {
    "type": {"type": "string", "enum": ["text", "image", "document", "tool_use", "tool_result", "thinking",
                                         "redacted_thinking"]}}}}
_ANTHROPIC = {
    "model": {"type": "string", "minLength": 1},
    "messages": {"type": "array", "items": {"type": "object", "required": ["role", "content"], "properties": {
        "role": {"type": "string", "enum": ["user", "assistant"]}, "content": _BLOCKS}}},
    "system": {"type": ["string", "array"]},
    "tools": {"type": "array", "items": {"type": "object", "required": ["name", "input_schema"], "properties": {
        "name": {"type": "string"}, "description": {"type": "string"}, "input_schema": {"type": "object"}}}},
    "tool_choice": {"type": "object", "required": ["type"], "properties": {
        "type": {"type": "string", "enum": ["auto", "any", "tool", "none"]}, "name": {"type": "string"}}},
    "thinking": {"type": "object", "required": ["type"], "properties": {
        "type": {"type": "string", "enum": ["enabled", "adaptive", "disabled"]}, "budget_tokens": {"type": "integer"}}},
}
# Anthropic Messages (front/anthropic.py); what it does not read is ignored, not passed on
MESSAGES = {"type": "object", "required": ["model", "max_tokens", "messages"], "additionalProperties": True,
            "properties": {**_ANTHROPIC, "max_tokens": {"type": "integer"}, "stream": {"type": "boolean"},
                           "stop_sequences": {"type": "array", "items": {"type": "string"}},
                           "temperature": {"type": "number"}, "top_p": {"type": "number"},
                           "top_k": {"type": "integer"}, "metadata": {"type": "object"}}}
MESSAGES_COUNT = {"type": "object", "required": ["model", "messages"], "additionalProperties": True,
                  "properties": _ANTHROPIC}
# The rest of the local API (front/local.py): only `model` is read, the rest relayed as it came
_MODEL = {"model": _COMMON["model"]}
RERANK = {"type": "object", "required": ["model", "query", "documents"], "additionalProperties": True,
          "properties": {**_MODEL, "query": {"type": "string"}, "documents": {"type": "array"},
                         "top_n": {"type": "integer"}, "return_documents": {"type": "boolean"}}}
SCORE = {"type": "object", "required": ["model", "text_1", "text_2"], "additionalProperties": True,
         "properties": {**_MODEL, "text_1": {"type": ["string", "array"]}, "text_2": {"type": ["string", "array"]}}}
TOKENIZE = {"type": "object", "required": ["model"], "additionalProperties": True, "properties": {
    **_MODEL, "content": {"type": "string"}, "prompt": {"type": "string"}, "messages": {"type": "array"},
    "add_special": {"type": "boolean"}, "with_pieces": {"type": "boolean"}}}
DETOKENIZE = {"type": "object", "required": ["model", "tokens"], "additionalProperties": True,
              "properties": {**_MODEL, "tokens": {"type": "array", "items": {"type": "integer"}}}}
INFILL = {"type": "object", "required": ["model"], "additionalProperties": True, "properties": {
    **_MODEL, "input_prefix": {"type": "string"}, "input_suffix": {"type": "string"},
    "input_extra": {"type": "array"}, "prompt": {"type": "string"}, "n_predict": {"type": "integer"}}}
SPEECH = {"type": "object", "required": ["model", "input"], "additionalProperties": True, "properties": {
    **_MODEL, "input": {"type": "string"}, "voice": {"type": "string"}, "speed": {"type": "number"},
    "response_format": {"type": "string", "enum": ["mp3", "opus", "aac", "flac", "wav", "pcm"]}}}
IMAGE = {"type": "object", "required": ["model", "prompt"], "additionalProperties": True, "properties": {
    **_MODEL, "prompt": {"type": "string"}, "n": {"type": "integer"}, "size": {"type": "string"},
    "response_format": {"type": "string", "enum": ["url", "b64_json"]}}}
AUDIO_FORM = {"type": "object", "required": ["model", "file"], "additionalProperties": True, "properties": {
    **_MODEL, "file": {"type": "string", "format": "binary"}, "language": {"type": "string"},
    "prompt": {"type": "string"}, "response_format": {"type": "string"}, "temperature": {"type": "number"}}}

REQUEST_BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETION,
    "/v1/embeddings": EMBEDDING,
    "/api/chat": OLLAMA_CHAT,
    "/api/generate": OLLAMA_GENERATE,
    "/v1/responses": RESPONSES,
    "/v1/messages": MESSAGES,
    "/v1/rerank": RERANK,
    "/v1/score": SCORE,
    "/tokenize": TOKENIZE,
    "/detokenize": DETOKENIZE,
    "/infill": INFILL,
    "/v1/audio/speech": SPEECH,
    "/v1/images/generations": IMAGE,
}


def _post(schema: dict[str, Any], summary: str, error: dict[str, Any] = _ERROR) -> dict[str, Any]:
    errors = {str(s): {"description": "error", "content": {"application/json": {"schema": error}}}
              for s in (400, 401, 404, 413, 429, 502, 503, 504)}
    return {"post": {"summary": summary, "requestBody": {"required": True, "content": {
        "application/json": {"schema": schema}}}, "responses": {"200": {"description": "the runtime's answer"},
                                                              **errors}}}


def _form(schema: dict[str, Any], summary: str) -> dict[str, Any]:
    post = _post(schema, summary)
    post["post"]["requestBody"]["content"] = {"multipart/form-data": {"schema": schema}}
    return post


_RELAYED = ", routed by model and relayed as it came to a runtime serving it (404 when none does)"


def _get(summary: str) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": {"description": "ok"}}}}


def spec() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "mtproxy", "version": __version__,
                 "description": "One OpenAI-compatible URL for local LLM runtimes"},
        "paths": {
            "/v1/chat/completions": _post(CHAT, "Chat completion, routed by model (SSE when stream)"),
            "/v1/completions": _post(COMPLETION, "Text completion, routed by model"),
            "/v1/embeddings": _post(EMBEDDING, "Embeddings, routed by model"),
            "/v1/responses": _post(RESPONSES, "OpenAI Responses: translated to chat completions, or relayed to "
                                               "a runtime serving it (typed SSE events when stream)"),
            "/v1/responses/{id}": {**_get("A stored response (404 when unknown, evicted or deleted)"),
                                   "delete": {"summary": "Delete a stored response",
                                              "responses": {"200": {"description": "deleted"}}}},
            "/v1/responses/{id}/input_items": _get("A stored response's input items (after, limit, order)"),
            "/v1/models": _get("Every served model and alias"),
            "/v1/models/{model}": {"get": {"summary": "One model", "parameters": [
                {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "ok"}, "404": {"description": "unknown model"}}}},
            "/v1/messages": _post(MESSAGES, "Anthropic Messages, routed by model: relayed to a runtime that "
                                  "serves it, else translated to chat completions (SSE when stream)",
                                  _ANTHROPIC_ERROR),
            "/v1/messages/count_tokens": _post(MESSAGES_COUNT, "Anthropic token count, by the backend's "
                                               "tokenizer (501 when its runtime has none)", _ANTHROPIC_ERROR),
            "/v1/rerank": _post(RERANK, "Rerank" + _RELAYED),
            "/rerank": _post(RERANK, "Rerank (vLLM's, llama-server's path)" + _RELAYED),
            "/v1/reranking": _post(RERANK, "Rerank (llama-server's path)" + _RELAYED),
            "/v1/score": _post(SCORE, "Score text pairs (vLLM)" + _RELAYED),
            "/tokenize": _post(TOKENIZE, "Tokenize (vLLM, llama-server)" + _RELAYED),
            "/detokenize": _post(DETOKENIZE, "Detokenize (vLLM, llama-server)" + _RELAYED),
            "/infill": _post(INFILL, "Fill in the middle (llama-server)" + _RELAYED),
            "/v1/audio/transcriptions": _form(AUDIO_FORM, "Transcribe audio (multipart, by its model "
                                              "field)" + _RELAYED),
            "/v1/audio/translations": _form(AUDIO_FORM, "Translate audio (multipart, by its model "
                                            "field)" + _RELAYED),
            "/v1/audio/speech": _post(SPEECH, "Speech: the runtime's audio bytes and content type" + _RELAYED),
            "/v1/images/generations": _post(IMAGE, "Generate images" + _RELAYED),
            "/api/chat": _post(OLLAMA_CHAT, "Ollama API chat (NDJSON when stream)"),
            "/api/generate": _post(OLLAMA_GENERATE, "Ollama API generate"),
            "/api/tags": _get("Ollama API model list"),
            "/api/version": _get("Ollama API version"),
            "/health": _get("Liveness"),
            "/ready": _get("Readiness: 200 when a backend is up"),
            "/metrics": _get("Prometheus metrics"),
            "/mtproxy/backends": _get("Backends' live state"),
        },
    }
