"""Conversions between OpenAI's API and Ollama's native API (pure functions, no I/O).

Source: ollama/ollama api/types.go (ChatRequest, GenerateRequest, ChatResponse,
GenerateResponse, Metrics, Options), openai/openai.go (how Ollama itself maps OpenAI parameters
to options), docs/api.md. Durations are nanoseconds.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from typing import Any

import orjson

# OpenAI parameter → Ollama option, as openai/openai.go maps them.
_OPTION_OF = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "stop": "stop",
    "max_tokens": "num_predict",
    "max_completion_tokens": "num_predict",
}
_PARAM_OF = {"temperature": "temperature", "top_p": "top_p", "seed": "seed",
             "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
             "stop": "stop", "num_predict": "max_tokens"}

FINISH_REASON = {"stop": "stop", "length": "length", "load": "stop", "unload": "stop"}
DONE_REASON = {"stop": "stop", "length": "length", "tool_calls": "stop", "content_filter": "stop"}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


# --- OpenAI request → Ollama request (a backend with runtime: ollama) -----------------------

def options_from_openai(payload: dict[str, Any]) -> dict[str, Any]:
    options = {_OPTION_OF[k]: v for k, v in payload.items() if k in _OPTION_OF and v is not None}
    if isinstance(options.get("stop"), str):
        options["stop"] = [options["stop"]]
    extra = payload.get("options")  # mtproxy extension: native options, e.g. draft_num_predict
    if isinstance(extra, dict):
        options.update(extra)
    return options


def _format_from_openai(response_format: Any) -> Any:
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_object":
        return "json"
    if response_format.get("type") == "json_schema":
        return (response_format.get("json_schema") or {}).get("schema")
    return None


def _message_to_ollama(msg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": msg.get("role", "user")}
    content = msg.get("content")
    if isinstance(content, list):
        texts, images = [], []
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text":
                texts.append(part.get("text") or "")
            elif part.get("type") == "image_url":
                url = (part.get("image_url") or {}).get("url", "")
                if url.startswith("data:") and "," in url:
                    images.append(url.split(",", 1)[1])
        out["content"] = "\n".join(texts)
        if images:
            out["images"] = images
    else:
        out["content"] = content or ""
    if msg.get("tool_calls"):
        calls = []
        for call in msg["tool_calls"]:
            fn = (call or {}).get("function") or {}
            args = fn.get("arguments")
            if isinstance(args, str):
                try:
                    args = orjson.loads(args) if args else {}
                except orjson.JSONDecodeError:
                    args = {}
            calls.append({"function": {"name": fn.get("name", ""), "arguments": args or {}}})
        out["tool_calls"] = calls
    if msg.get("role") == "tool" and msg.get("name"):
        out["tool_name"] = msg["name"]
    return out


def chat_request(payload: dict[str, Any], stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": payload["model"],
        "messages": [_message_to_ollama(m) for m in payload.get("messages") or () if isinstance(m, dict)],
        "stream": stream,
    }
    _common(payload, body)
    if payload.get("tools"):
        body["tools"] = payload["tools"]
    return body


def generate_request(payload: dict[str, Any], stream: bool) -> dict[str, Any]:
    prompt = payload.get("prompt", "")
    if isinstance(prompt, list):  # OpenAI allows a batch; Ollama takes one prompt
        prompt = prompt[0] if prompt and isinstance(prompt[0], str) else ""
    body: dict[str, Any] = {"model": payload["model"], "prompt": prompt, "raw": True, "stream": stream}
    if payload.get("suffix"):
        body["suffix"] = payload["suffix"]
    _common(payload, body)
    return body


def embed_request(payload: dict[str, Any]) -> dict[str, Any]:
    body = {"model": payload["model"], "input": payload.get("input", "")}
    if payload.get("dimensions"):
        body["dimensions"] = payload["dimensions"]
    return body


def _common(payload: dict[str, Any], body: dict[str, Any]) -> None:
    options = options_from_openai(payload)
    if options:
        body["options"] = options
    fmt = _format_from_openai(payload.get("response_format"))
    if fmt is not None:
        body["format"] = fmt
    for key in ("keep_alive", "think"):
        if key in payload:
            body[key] = payload[key]


# --- Ollama response → OpenAI response --------------------------------------------------------

def usage_of(obj: dict[str, Any]) -> dict[str, int] | None:
    prompt, completion = obj.get("prompt_eval_count"), obj.get("eval_count")
    if prompt is None and completion is None:
        return None
    prompt, completion = prompt or 0, completion or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _tool_calls_to_openai(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"index": i, "id": new_id("call"), "type": "function",
             "function": {"name": (c.get("function") or {}).get("name", ""),
                          "arguments": orjson.dumps((c.get("function") or {}).get("arguments") or {}).decode()}}
            for i, c in enumerate(calls)]


def chat_delta(obj: dict[str, Any], first: bool) -> dict[str, Any]:
    msg = obj.get("message") or {}
    delta: dict[str, Any] = {"role": "assistant"} if first else {}
    if msg.get("content"):
        delta["content"] = msg["content"]
    if msg.get("thinking"):
        delta["reasoning_content"] = msg["thinking"]
    if msg.get("tool_calls"):
        delta["tool_calls"] = _tool_calls_to_openai(msg["tool_calls"])
    return delta


def finish_reason(obj: dict[str, Any], saw_tool_calls: bool) -> str:
    if saw_tool_calls:
        return "tool_calls"
    return FINISH_REASON.get(obj.get("done_reason") or "stop", "stop")


def chat_body(obj: dict[str, Any], model: str) -> dict[str, Any]:
    msg = obj.get("message") or {}
    message: dict[str, Any] = {"role": "assistant", "content": msg.get("content", "")}
    if msg.get("thinking"):
        message["reasoning_content"] = msg["thinking"]
    calls = msg.get("tool_calls")
    if calls:
        message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in _tool_calls_to_openai(calls)]
    body = {"id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(obj, bool(calls))}]}
    usage = usage_of(obj)
    if usage:
        body["usage"] = usage
    return body


def completion_body(obj: dict[str, Any], model: str) -> dict[str, Any]:
    body = {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": obj.get("response", ""), "logprobs": None,
                         "finish_reason": finish_reason(obj, False)}]}
    usage = usage_of(obj)
    if usage:
        body["usage"] = usage
    return body


def embeddings_body(obj: dict[str, Any], model: str) -> dict[str, Any]:
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(obj.get("embeddings") or [])]
    prompt = obj.get("prompt_eval_count") or 0
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}


# --- Ollama request → OpenAI request (an Ollama client of mtproxy) ----------------------------

def _message_to_openai(msg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": msg.get("role", "user")}
    images = msg.get("images") or []
    if images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": msg.get("content", "")}]
        parts += [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{img}"}} for img in images]
        out["content"] = parts
    else:
        out["content"] = msg.get("content", "")
    if msg.get("tool_calls"):
        out["tool_calls"] = [{k: v for k, v in c.items() if k != "index"}
                             for c in _tool_calls_to_openai(msg["tool_calls"])]
    if msg.get("tool_name"):
        out["name"] = msg["tool_name"]
    return out


def _openai_common(body: dict[str, Any], payload: dict[str, Any]) -> None:
    options = body.get("options")
    if isinstance(options, dict):
        for key, value in options.items():
            if key in _PARAM_OF and value is not None:
                payload[_PARAM_OF[key]] = value
        payload["options"] = options  # kept whole for Ollama backends; others never see it
    fmt = body.get("format")
    if fmt == "json":
        payload["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        payload["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt}}
    for key in ("keep_alive", "think"):
        if key in body:
            payload[key] = body[key]


def openai_chat_from_ollama(body: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": body.get("model"),
        "messages": [_message_to_openai(m) for m in body.get("messages") or () if isinstance(m, dict)],
        "stream": body.get("stream", True) is not False,
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
    stream = body.get("stream", True) is not False
    if body.get("raw"):
        payload: dict[str, Any] = {"model": body.get("model"), "prompt": body.get("prompt", ""), "stream": stream}
        _openai_common(body, payload)
        return payload, False
    messages: list[dict[str, Any]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": body["system"]})
    user: dict[str, Any] = {"role": "user", "content": body.get("prompt", "")}
    if body.get("images"):
        user["images"] = body["images"]
    messages.append(_message_to_openai(user))
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
