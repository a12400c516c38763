"""Conversions between Anthropic's Messages API and OpenAI chat completions (pure functions).

Reference: docs/anthropic-messages.md (the request fields, the blocks, the error types, and
where each mapping comes from). What has no chat equivalent: ``tool_result.is_error`` (the
result's text is prefixed with "Error: "), ``thinking.budget_tokens`` (thinking is switched on
or off through the chat template's ``enable_thinking``), ``cache_control``, ``container``,
``service_tier`` and the other Anthropic-hosted options (ignored), server tools and non-text
documents (refused with a 400).
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from ..errors import InvalidRequest

# OpenAI finish_reason -> Anthropic stop_reason
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}

# HTTP status -> Anthropic error type (https://docs.claude.com/en/api/errors)
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 503: "overloaded_error", 504: "timeout_error",
               529: "overloaded_error"}

_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


def _mapping(value: Any) -> dict[str, Any]:
    """``value`` when it is an object, else an empty one."""
    return value if isinstance(value, dict) else {}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def error_body(message: str, type_: str) -> dict[str, Any]:
    """Anthropic's error shape."""
    return {"type": "error", "error": {"type": type_, "message": message}}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


# --- request: Anthropic -> chat ------------------------------------------------------------------

def _bad(where: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{where}: {message}", param=where.split(".")[0])


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(where, "Input should be an object")
    return value


def _str(block: dict[str, Any], key: str, where: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise _bad(f"{where}.{key}", "Field required" if value is None else "Input should be a string")
    return value


def _system(value: Any) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise _bad("system", "Input should be a string or a list of text blocks")
    texts = []
    for i, block in enumerate(value):
        block = _obj(block, f"system.{i}")
        if block.get("type") != "text":
            raise _bad(f"system.{i}.type", "Input should be 'text'")
        texts.append(_str(block, "text", f"system.{i}"))
    return "\n".join(texts)


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = _obj(block.get("source"), f"{where}.source")
    kind = source.get("type")
    if kind == "base64":
        media = _str(source, "media_type", f"{where}.source")
        if media not in _IMAGE_TYPES:
            raise _bad(f"{where}.source.media_type", f"Input should be one of {', '.join(sorted(_IMAGE_TYPES))}")
        url = f"data:{media};base64,{_str(source, 'data', f'{where}.source')}"
    elif kind == "url":
        url = _str(source, "url", f"{where}.source")
    else:
        raise _bad(f"{where}.source.type", "Input should be 'base64' or 'url'")
    return {"type": "image_url", "image_url": {"url": url}}


def _document(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = _obj(block.get("source"), f"{where}.source")
    if source.get("type") != "text":
        raise _bad(f"{where}.source.type", "only text documents are supported by this proxy")
    return {"type": "text", "text": _str(source, "data", f"{where}.source")}


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    """Text, image and text-document blocks as chat content parts."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _bad(where, "Input should be a string or a list of blocks")
    parts = []
    for i, block in enumerate(content):
        at = f"{where}.{i}"
        block = _obj(block, at)
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": _str(block, "text", at)})
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "document":
            parts.append(_document(block, at))
        else:
            raise _bad(f"{at}.type", f"block type {kind!r} is not supported here")
    return parts


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text-only parts as one string (every chat template takes that), else the parts."""
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _user(content: list[Any], where: str) -> list[dict[str, Any]]:
    """A user turn's blocks: one tool message per tool_result (first, as chat wants them right
    after the assistant's calls), then the rest as one user message."""
    tools: list[dict[str, Any]] = []
    rest: list[Any] = []
    for i, block in enumerate(content):
        at = f"{where}.{i}"
        block = _obj(block, at)
        if block.get("type") != "tool_result":
            rest.append(block)
            continue
        result = block.get("content", "")
        parts = _parts(result, f"{at}.content") if result else []
        text: Any = _content(parts) if parts else ""
        if block.get("is_error") and isinstance(text, str):
            text = f"Error: {text}"
        tools.append({"role": "tool", "tool_call_id": _str(block, "tool_use_id", at), "content": text})
    if rest:
        tools.append({"role": "user", "content": _content(_parts(rest, where))})
    return tools


def _assistant(content: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        at = f"{where}.{i}"
        block = _obj(block, at)
        kind = block.get("type")
        if kind == "text":
            texts.append(_str(block, "text", at))
        elif kind == "thinking":
            thinking.append(_str(block, "thinking", at))
        elif kind == "redacted_thinking":
            continue  # encrypted by Anthropic: nothing a local model can read
        elif kind == "tool_use":
            args = _obj(block.get("input", {}), f"{at}.input")
            calls.append({"id": _str(block, "id", at), "type": "function",
                          "function": {"name": _str(block, "name", at), "arguments": orjson.dumps(args).decode()}})
        else:
            raise _bad(f"{at}.type", f"block type {kind!r} is not supported in an assistant turn")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    return message


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _bad("messages", "Field required" if value is None else "Input should be a valid list")
    out = []
    for i, message in enumerate(value):
        at = f"messages.{i}"
        message = _obj(message, at)
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant"):
            raise _bad(f"{at}.role", "Input should be 'user' or 'assistant'")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif not isinstance(content, list):
            raise _bad(f"{at}.content", "Field required" if content is None else "Input should be a string or a list")
        elif role == "user":
            out.extend(_user(content, f"{at}.content"))
        else:
            out.append(_assistant(content, f"{at}.content"))
    return out


def _tools(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _bad("tools", "Input should be a valid list")
    out = []
    for i, tool in enumerate(value):
        at = f"tools.{i}"
        tool = _obj(tool, at)
        if tool.get("type") not in (None, "custom"):
            raise _bad(f"{at}.type", f"tool type {tool.get('type')!r} is not supported: only custom tools")
        function: dict[str, Any] = {"name": _str(tool, "name", at),
                                    "parameters": _obj(tool.get("input_schema"), f"{at}.input_schema")}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(value: Any, out: dict[str, Any]) -> None:
    choice = _obj(value, "tool_choice")
    kind = choice.get("type")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": _str(choice, "name", "tool_choice")}}
    else:
        raise _bad("tool_choice.type", "Input should be 'auto', 'any', 'tool' or 'none'")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


def _number(body: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _bad(key, "Input should be a valid number" if kind is not int else "Input should be a valid integer")
    return value


def chat_from_messages(body: dict[str, Any], *, count: bool = False) -> dict[str, Any]:
    """An Anthropic Messages request (``count``: a count_tokens request, without max_tokens and
    sampling) as an OpenAI chat request."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "Field required" if model is None else "Input should be a non-empty string")
    out: dict[str, Any] = {"model": model}
    messages = _messages(body.get("messages"))
    if "system" in body and body["system"] is not None:
        messages.insert(0, {"role": "system", "content": _system(body["system"])})
    out["messages"] = messages
    if not count:
        if "max_tokens" not in body:
            raise _bad("max_tokens", "Field required")
        max_tokens = _number(body, "max_tokens", int)
        if max_tokens < 1:
            raise _bad("max_tokens", "Input should be greater than or equal to 1")
        out["max_tokens"] = max_tokens
        for key in ("temperature", "top_p"):
            if body.get(key) is not None:
                out[key] = _number(body, key, (int, float))
        if body.get("top_k") is not None:
            out["top_k"] = _number(body, "top_k", int)
        stops = body.get("stop_sequences")
        if stops is not None:
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise _bad("stop_sequences", "Input should be a list of strings")
            if stops:
                out["stop"] = stops
        metadata = body.get("metadata")
        if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
            out["user"] = metadata["user_id"]
        stream = body.get("stream")
        if stream is not None:
            out["stream"] = stream  # validated by wire.from_payload
            if stream is True:
                out["stream_options"] = {"include_usage": True}
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], out)
    thinking = body.get("thinking")
    if thinking is not None:
        kind = _obj(thinking, "thinking").get("type")
        if kind not in ("enabled", "adaptive", "disabled"):
            raise _bad("thinking.type", "Input should be 'enabled', 'adaptive' or 'disabled'")
        out["chat_template_kwargs"] = {"enable_thinking": kind != "disabled"}
    return out


# --- answer: chat -> Anthropic --------------------------------------------------------------------

def usage_from_chat(usage: Any, prompt: int | None = None, completion: int | None = None) -> dict[str, int]:
    """OpenAI usage (prompt tokens include the cached ones) in Anthropic's (input tokens do not);
    ``prompt``/``completion``: the counts to use where the usage has none."""
    cached = 0
    if isinstance(usage, dict):
        if isinstance(usage.get("prompt_tokens"), int):
            prompt = usage["prompt_tokens"]
        if isinstance(usage.get("completion_tokens"), int):
            completion = usage["completion_tokens"]
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
            cached = details["cached_tokens"]
    prompt = prompt or 0
    return {"input_tokens": max(prompt - cached, 0), "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached, "output_tokens": completion or 0}


def stop_of(choice: dict[str, Any], stops: Any) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a chat choice; the stop string is known where the runtime
    says which one matched (vLLM's ``stop_reason``)."""
    reason = STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn")
    matched = choice.get("stop_reason")
    if reason == "end_turn" and isinstance(matched, str) and isinstance(stops, list) and matched in stops:
        return "stop_sequence", matched
    return reason, None


def tool_input(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = orjson.loads(arguments) if arguments else {}
    except (orjson.JSONDecodeError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


def message_from_chat(obj: dict[str, Any], model: str, stops: Any, prompt: int | None,
                      completion: int | None) -> dict[str, Any]:
    """A non-streaming chat completion as an Anthropic Message."""
    choices = obj.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = _mapping(choice.get("message"))
    content: list[dict[str, Any]] = []
    thinking = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(thinking, str) and thinking:
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        fn = _mapping(call.get("function"))
        content.append({"type": "tool_use", "id": call.get("id") or new_id("toolu"), "name": fn.get("name") or "",
                        "input": tool_input(fn.get("arguments"))})
    reason, sequence = stop_of(choice, stops)
    if reason == "end_turn" and any(block["type"] == "tool_use" for block in content):
        reason = "tool_use"  # a runtime that says "stop" after its tool calls
    return {"id": new_id("msg"), "type": "message", "role": "assistant", "content": content, "model": model,
            "stop_reason": reason, "stop_sequence": sequence,
            "usage": usage_from_chat(obj.get("usage"), prompt, completion)}
