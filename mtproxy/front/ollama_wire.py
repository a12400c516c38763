"""Conversions for an Ollama client of mtproxy (pure functions, no I/O): its requests to the
proxy's internal (OpenAI-shaped) request, and the final line's figures of its answers.

Source: ollama/ollama api/types.go, docs/api.md. A field the translation reads must have the type
it is read as, or the request is a 400 naming the field; fields it only carries over are left to
the runtime to judge.
"""

from __future__ import annotations

from typing import Any

from ..runtimes.ollama_wire import array_field, object_field, tool_calls_to_openai, wrong

# Ollama option → OpenAI parameter (the inverse of runtimes/ollama_wire.py's _OPTION_OF).
_PARAM_OF = {"temperature": "temperature", "top_p": "top_p", "seed": "seed",
             "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
             "stop": "stop", "num_predict": "max_tokens"}
# OpenAI finish_reason → Ollama done_reason.
DONE_REASON = {"stop": "stop", "length": "length", "tool_calls": "stop", "content_filter": "stop"}
# --- Ollama request → OpenAI request (an Ollama client of mtproxy) ----------------------------

def _string(body: dict[str, Any], key: str, at: str = "") -> str:
    value = body.get(key)
    if value is None:
        return ""
    if value.__class__ is not str:
        raise wrong(key, "a string", at)
    return value


def _images(body: dict[str, Any], at: str = "") -> list[str]:
    images = body.get("images") or []
    if images.__class__ is not list or not all(image.__class__ is str for image in images):
        raise wrong("images", "an array of base64 strings", at)
    return images


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if value.__class__ is not bool:
        raise wrong(key, "a boolean")
    return value


def _checked_calls(calls: Any, at: str) -> list[dict[str, Any]]:
    """An Ollama client's tool calls: objects whose ``function`` is an object."""
    if calls.__class__ is not list:
        raise wrong("tool_calls", "an array", at)
    for j, call in enumerate(calls):
        if call.__class__ is not dict or (call.get("function") or {}).__class__ is not dict:
            raise wrong(f"tool_calls[{j}]", 'an object with a "function" object', at)
    return calls


def _message_to_openai(msg: Any, i: int) -> dict[str, Any]:
    at = f"messages[{i}]"
    if msg.__class__ is not dict:
        raise wrong(at, "an object")
    out: dict[str, Any] = {"role": msg.get("role", "user")}
    content = _string(msg, "content", at)
    images = _images(msg, at)
    if images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": content}]
        parts += [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{img}"}} for img in images]
        out["content"] = parts
    else:
        out["content"] = content
    if msg.get("tool_calls"):
        out["tool_calls"] = [{k: v for k, v in c.items() if k != "index"}
                             for c in tool_calls_to_openai(_checked_calls(msg["tool_calls"], at))]
    if msg.get("tool_name"):
        out["name"] = msg["tool_name"]
    return out


def _openai_common(body: dict[str, Any], payload: dict[str, Any]) -> None:
    options = object_field(body, "options")
    if options is not None:
        for key, value in options.items():
            if key in _PARAM_OF and value is not None:
                payload[_PARAM_OF[key]] = value
        payload["options"] = options  # kept whole for Ollama backends; others never see it
    fmt = body.get("format")
    if fmt == "json":
        payload["response_format"] = {"type": "json_object"}
    elif fmt.__class__ is dict:
        payload["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt}}
    elif fmt is not None and fmt != "":
        raise wrong("format", '"json" or a JSON schema object')
    for key in ("keep_alive", "think"):
        if key in body:
            payload[key] = body[key]


def openai_chat_from_ollama(body: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": body.get("model"),
        "messages": [_message_to_openai(m, i) for i, m in enumerate(array_field(body, "messages"))],
        "stream": _flag(body, "stream", True),
    }
    if body.get("tools"):
        payload["tools"] = body["tools"]
    _openai_common(body, payload)
    return payload


def openai_from_generate(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """An Ollama /api/generate request as an OpenAI request; returns (payload, is_chat).

    Without ``raw`` Ollama applies the model's chat template, as a chat completion does; with it
    the prompt goes to the model as it is, as a text completion does.
    """
    stream = _flag(body, "stream", True)
    prompt = _string(body, "prompt")
    if _flag(body, "raw", False):
        payload: dict[str, Any] = {"model": body.get("model"), "prompt": prompt, "stream": stream}
        _openai_common(body, payload)
        return payload, False
    messages: list[dict[str, Any]] = []
    system = _string(body, "system")
    if system:
        messages.append({"role": "system", "content": system})
    messages.append(_message_to_openai({"role": "user", "content": prompt, "images": _images(body)}, 0))
    payload = {"model": body.get("model"), "messages": messages, "stream": stream}
    _openai_common(body, payload)
    return payload, True


# --- OpenAI response → Ollama response (an Ollama client of mtproxy) --------------------------

def final_fields(usage: dict[str, Any] | None, done_reason: str, total_ns: int,
                 prompt_seconds: float | None, decode_seconds: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {"done": True, "done_reason": done_reason, "total_duration": total_ns}
    if usage:
        if usage.get("prompt_tokens") is not None:
            out["prompt_eval_count"] = usage["prompt_tokens"]
        if prompt_seconds is not None:
            out["prompt_eval_duration"] = int(prompt_seconds * 1e9)
        if usage.get("completion_tokens") is not None:
            out["eval_count"] = usage["completion_tokens"]
        if decode_seconds is not None:
            out["eval_duration"] = int(decode_seconds * 1e9)
    return out
