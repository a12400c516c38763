"""Conversions between OpenAI's API and Ollama's native API for an Ollama backend (pure functions,
no I/O): OpenAI requests to Ollama's, Ollama's answers to OpenAI's. The other direction (an Ollama
client of mtproxy) is front/ollama_wire.py, which shares the helpers here.

Source: ollama/ollama api/types.go (ChatRequest, GenerateRequest, ChatResponse,
GenerateResponse, Metrics, Options), openai/openai.go (how Ollama itself maps OpenAI parameters
to options), docs/api.md. Durations are nanoseconds.

Requests: a field the translation reads must have the type it is read as, or the request is a
400 naming the field (``messages[1].content``); fields it only carries over are left to the
runtime to judge.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from ..errors import InvalidRequest
from ..wire import deeply_nested, too_deep

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

FINISH_REASON = {"stop": "stop", "length": "length", "load": "stop", "unload": "stop"}


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def wrong(field: str, what: str, at: str = "") -> InvalidRequest:
    """The 400 for a field of the wrong type; ``at``: where the field's object is (``messages[2]``)."""
    field = f"{at}.{field}" if at else field
    return InvalidRequest(f"`{field}` must be {what}.", param=field)


def array_field(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key)
    if value is None:
        return []
    if value.__class__ is not list:
        raise wrong(key, "an array")
    return value


def object_field(body: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = body.get(key)
    if value is not None and value.__class__ is not dict:
        raise wrong(key, "an object")
    return value


# --- OpenAI request → Ollama request (a backend with runtime: ollama) -----------------------

def options_from_openai(payload: dict[str, Any]) -> dict[str, Any]:
    options = {_OPTION_OF[k]: v for k, v in payload.items() if k in _OPTION_OF and v is not None}
    if isinstance(options.get("stop"), str):
        options["stop"] = [options["stop"]]
    extra = object_field(payload, "options")  # mtproxy extension: native options, e.g. draft_num_predict
    if extra:
        options.update(extra)
    return options


def _format_from_openai(payload: dict[str, Any]) -> Any:
    response_format = object_field(payload, "response_format")
    if response_format is None:
        return None
    if response_format.get("type") == "json_object":
        return "json"
    if response_format.get("type") == "json_schema":
        schema = response_format.get("json_schema") or {}
        if schema.__class__ is not dict:
            raise wrong("response_format.json_schema", "an object")
        return schema.get("schema")
    return None


def _parts_to_ollama(parts: list[Any], at: str, out: dict[str, Any]) -> None:
    texts, images = [], []
    for j, part in enumerate(parts):
        if part.__class__ is not dict:
            raise wrong(f"content[{j}]", "an object", at)
        if part.get("type") == "text":
            text = part.get("text") or ""
            if text.__class__ is not str:
                raise wrong(f"content[{j}].text", "a string", at)
            texts.append(text)
        elif part.get("type") == "image_url":
            image = part.get("image_url") or {}
            url = (image.get("url") or "") if image.__class__ is dict else None
            if url.__class__ is not str:
                raise wrong(f"content[{j}].image_url.url", "a string", at)
            if url.startswith("data:") and "," in url:
                images.append(url.split(",", 1)[1])
    out["content"] = "\n".join(texts)
    if images:
        out["images"] = images


def _call_to_ollama(call: Any, at: str) -> dict[str, Any]:
    if call.__class__ is not dict:
        raise wrong(at, "an object")
    fn = call.get("function") or {}
    if fn.__class__ is not dict:
        raise wrong("function", "an object", at)
    args = fn.get("arguments")
    if args.__class__ is str:  # OpenAI sends them as JSON text, Ollama as the object
        try:
            args = orjson.loads(args) if args else {}
        except orjson.JSONDecodeError:
            args = {}
        if too_deep(args):
            raise deeply_nested(f"`{at}.function.arguments`", param=f"{at}.function.arguments")
    return {"function": {"name": fn.get("name", ""), "arguments": args or {}}}


def _message_to_ollama(msg: Any, i: int) -> dict[str, Any]:
    if msg.__class__ is not dict:
        raise wrong(f"messages[{i}]", "an object")
    out: dict[str, Any] = {"role": msg.get("role", "user")}
    content = msg.get("content")
    if content.__class__ is list:
        _parts_to_ollama(content, f"messages[{i}]", out)
    elif content is None or content.__class__ is str:
        out["content"] = content or ""
    else:
        raise wrong("content", "a string, an array of parts or null", f"messages[{i}]")
    calls = msg.get("tool_calls")
    if calls:
        if calls.__class__ is not list:
            raise wrong("tool_calls", "an array", f"messages[{i}]")
        out["tool_calls"] = [_call_to_ollama(call, f"messages[{i}].tool_calls[{j}]") for j, call in enumerate(calls)]
    if msg.get("role") == "tool" and msg.get("name"):
        out["tool_name"] = msg["name"]
    return out


def chat_request(payload: dict[str, Any], stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": payload["model"],
        "messages": [_message_to_ollama(m, i) for i, m in enumerate(array_field(payload, "messages"))],
        "stream": stream,
    }
    _common(payload, body)
    if payload.get("tools"):
        body["tools"] = payload["tools"]
    return body


def generate_request(payload: dict[str, Any], stream: bool) -> dict[str, Any]:
    prompt = payload.get("prompt") or ""
    if prompt.__class__ is list:  # OpenAI allows a batch; Ollama takes one prompt
        prompt = prompt[0] if prompt and isinstance(prompt[0], str) else ""
    elif prompt.__class__ is not str:
        raise wrong("prompt", "a string or an array")
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
    fmt = _format_from_openai(payload)
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


def tool_calls_to_openai(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
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
        delta["tool_calls"] = tool_calls_to_openai(msg["tool_calls"])
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
        message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in tool_calls_to_openai(calls)]
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
