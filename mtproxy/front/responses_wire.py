"""OpenAI Responses <-> chat completions: the pure conversions behind front/responses.py.

Request: a Responses body (O ``response_create_params.py``) is checked field by field (a wrong
type is a 400 naming the field) and becomes a :class:`Create`: the chat payload it translates
to, its input as Responses items (with ids, for ``input_items`` and the conversation store) and
the fields the Response object echoes. Answer: chat bodies and chunks become Response objects
and output items (O ``response.py``; docs/issue20-wire notes §2.3, §2.6). The stream events are
written by front/responses.py.
"""

from __future__ import annotations

import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import InvalidRequest

_random = random.Random(secrets.randbits(128))  # item ids: unique, not secret
# The roles of a Responses message and what chat calls them.
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_TOOL_CHOICES = ("none", "auto", "required")
_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")
# The request fields the Response object echoes, with OpenAI's defaults when absent.
_ECHO_DEFAULTS: dict[str, Any] = {
    "instructions": None, "max_output_tokens": None, "metadata": {}, "parallel_tool_calls": True,
    "previous_response_id": None, "temperature": 1.0, "tool_choice": "auto", "top_p": 1.0,
    "truncation": "disabled", "user": None,
}


def _mapping(value: Any) -> dict[str, Any]:
    """``value`` when it is an object, else an empty one."""
    return value if isinstance(value, dict) else {}


def response_id() -> str:
    """A response's id: it reads the stored response back (GET, input_items, DELETE, and
    previous_response_id), for any client with the proxy's key, so it is unguessable (128
    bits from the OS) and unique across replicas."""
    return f"resp_{secrets.token_hex(16)}"


def new_id(prefix: str) -> str:
    """An item's id (``msg_``, ``fc_``, ``rs_``, ``call_``): unique, read nothing back."""
    return f"{prefix}_{_random.getrandbits(128):032x}"


@dataclass(slots=True)
class Create:
    """One parsed ``POST /v1/responses``."""

    model: str
    stream: bool
    store: bool
    previous_response_id: str | None
    items: list[dict[str, Any]]  # this request's input, as Responses items with ids
    echo: dict[str, Any]  # the Response object's request fields (instructions, tools, ...)
    chat: dict[str, Any] = field(default_factory=dict)  # the chat completions payload
    native: bool = True  # a runtime serving /v1/responses itself loses nothing of it


# --- checks -----------------------------------------------------------------------------------

def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _opt(body: dict[str, Any], key: str, types: type | tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise _bad(f"`{key}` must be {what}.", key)
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _text_of(content: Any, param: str) -> str:
    """The text of a content string or list of text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad("`content` must be a string or a list of content parts.", param)
    out = []
    for i, part in enumerate(content):
        if not isinstance(part, dict):
            raise _bad("A content part must be an object.", f"{param}[{i}]")
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad("`text` must be a string.", f"{param}[{i}].text")
            out.append(text)
        elif kind == "refusal":
            text = part.get("refusal")
            if not isinstance(text, str):
                raise _bad("`refusal` must be a string.", f"{param}[{i}].refusal")
            out.append(text)
        else:
            raise _bad(f"Content part type {kind!r} is not supported here.", f"{param}[{i}].type")
    return "".join(out)


def _user_content(content: Any, param: str) -> str | list[dict[str, Any]]:
    """A user message's content as chat content: a string, or text and image_url parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad("`content` must be a string or a list of content parts.", param)
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        if not isinstance(part, dict):
            raise _bad("A content part must be an object.", f"{param}[{i}]")
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad("`text` must be a string.", f"{param}[{i}].text")
            parts.append({"type": "text", "text": text})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise _bad("`image_url` must be a URL or a data URL (file_id is not supported).",
                           f"{param}[{i}].image_url")
            image: dict[str, Any] = {"url": url}
            if isinstance(part.get("detail"), str):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise _bad(f"Content part type {kind!r} is not supported.", f"{param}[{i}].type")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _input_parts(content: Any) -> list[dict[str, Any]]:
    """A message's content as the parts of an input item (``input_items``)."""
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    return [dict(p) for p in content]


def _item(raw: Any, i: int) -> dict[str, Any]:
    """One input item checked, as a Responses item with an id."""
    param = f"input[{i}]"
    if not isinstance(raw, dict):
        raise _bad("An input item must be an object.", param)
    kind = raw.get("type", "message" if "role" in raw else None)
    if kind == "message":
        role = raw.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise _bad("`role` must be one of 'user', 'assistant', 'system' or 'developer'.", f"{param}.role")
        content = raw.get("content")
        if role == "user":
            _user_content(content, f"{param}.content")
        else:
            _text_of(content, f"{param}.content")
        item_id = raw.get("id")
        out = {"id": item_id if isinstance(item_id, str) and item_id else new_id("msg"), "type": "message",
               "role": role, "content": _input_parts(content)}
        if role == "assistant":
            out["status"] = "completed"
        return out
    if kind == "function_call":
        for key in ("call_id", "name", "arguments"):
            if not isinstance(raw.get(key), str):
                raise _bad(f"`{key}` must be a string.", f"{param}.{key}")
        item_id = raw.get("id")
        return {"id": item_id if isinstance(item_id, str) and item_id else new_id("fc"), "type": "function_call",
                "status": "completed", "call_id": raw["call_id"], "name": raw["name"], "arguments": raw["arguments"]}
    if kind == "function_call_output":
        if not isinstance(raw.get("call_id"), str):
            raise _bad("`call_id` must be a string.", f"{param}.call_id")
        output = raw.get("output")
        if not isinstance(output, str):
            output = _text_of(output, f"{param}.output")
        item_id = raw.get("id")
        return {"id": item_id if isinstance(item_id, str) and item_id else new_id("fco"),
                "type": "function_call_output", "status": "completed", "call_id": raw["call_id"], "output": output}
    if kind == "reasoning":
        summary = raw.get("summary", [])
        content = raw.get("content") or []
        if not isinstance(summary, list) or not isinstance(content, list):
            raise _bad("`summary` and `content` must be lists.", param)
        _text_of(summary, f"{param}.summary")
        _text_of(content, f"{param}.content")
        item_id = raw.get("id")
        out = {"id": item_id if isinstance(item_id, str) and item_id else new_id("rs"), "type": "reasoning",
               "summary": summary}
        if content:
            out["content"] = content
        return out
    raise _bad(f"Input item type {kind!r} is not supported (message, function_call, "
               "function_call_output and reasoning are).", f"{param}.type")


def history_items(output: Any) -> list[dict[str, Any]]:
    """A response's output items as they are kept for the next turn: checked as input items
    are (a runtime's output relayed natively is not trusted), those that are not left out."""
    items = []
    for i, raw in enumerate(output if isinstance(output, list) else ()):
        try:
            items.append(_item(raw, i))
        except InvalidRequest:
            continue
    return items


def input_items(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"id": new_id("msg"), "type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": value}]}]
    if not isinstance(value, list):
        raise _bad("`input` must be a string or a list of input items.", "input")
    return [_item(raw, i) for i, raw in enumerate(value)]


def _tools(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _bad("`tools` must be a list.", "tools")
    out = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _bad("Only tools of type 'function' are supported.", f"tools[{i}].type")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _bad("`name` must be a non-empty string.", f"tools[{i}].name")
        params = tool.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise _bad("`parameters` must be a JSON schema object.", f"tools[{i}].parameters")
        desc = tool.get("description")
        if desc is not None and not isinstance(desc, str):
            raise _bad("`description` must be a string.", f"tools[{i}].description")
        strict = tool.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise _bad("`strict` must be a boolean.", f"tools[{i}].strict")
        out.append({"type": "function", "name": name, "description": desc, "parameters": params, "strict": strict})
    return out


def _tool_choice(value: Any) -> Any:
    if value is None or value in _TOOL_CHOICES:
        return value
    if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("name"), str):
        return {"type": "function", "name": value["name"]}
    raise _bad("`tool_choice` must be 'none', 'auto', 'required' or {\"type\": \"function\", \"name\": ...}.",
               "tool_choice")


def _text_format(value: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``text`` as echoed, and the chat ``response_format`` it asks for (None: plain text)."""
    if not isinstance(value, dict):
        raise _bad("`text` must be an object.", "text")
    fmt = value.get("format")
    if fmt is None:
        return {**value, "format": {"type": "text"}}, None
    if not isinstance(fmt, dict):
        raise _bad("`text.format` must be an object.", "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return value, None
    if kind == "json_object":
        return value, {"type": "json_object"}
    if kind == "json_schema":
        name, schema = fmt.get("name"), fmt.get("schema")
        if not isinstance(name, str) or not name:
            raise _bad("`name` must be a non-empty string.", "text.format.name")
        if not isinstance(schema, dict):
            raise _bad("`schema` must be a JSON schema object.", "text.format.schema")
        spec: dict[str, Any] = {"name": name, "schema": schema}
        for key in ("strict", "description"):
            if fmt.get(key) is not None:
                spec[key] = fmt[key]
        return value, {"type": "json_schema", "json_schema": spec}
    raise _bad("`text.format.type` must be 'text', 'json_object' or 'json_schema'.", "text.format.type")


# The scalar fields checked by type: the JSON types each may have (exact classes: a boolean is
# no number here) and how an error names them. Only the fields a request has are looked at.
_SCALARS: dict[str, tuple[tuple[type, ...], str]] = {
    "stream": ((bool,), "a boolean"), "store": ((bool,), "a boolean"),
    "previous_response_id": ((str,), "a string"), "instructions": ((str,), "a string"),
    "max_output_tokens": ((int,), "an integer"), "temperature": ((int, float), "a number"),
    "top_p": ((int, float), "a number"), "parallel_tool_calls": ((bool,), "a boolean"),
    "metadata": ((dict,), "an object"), "user": ((str,), "a string"), "reasoning": ((dict,), "an object"),
}
# The request fields chat completions takes as they are (Responses name -> chat name).
_TO_CHAT = (("max_output_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p"),
            ("parallel_tool_calls", "parallel_tool_calls"), ("user", "user"))


def parse_create(body: Any) -> Create:
    """A Responses request body, checked (InvalidRequest naming the field)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_model")
    echo: dict[str, Any] = dict(_ECHO_DEFAULTS)
    for key in body.keys() & _SCALARS.keys():
        value = body[key]
        if value is None:
            continue
        types, what = _SCALARS[key]
        if value.__class__ not in types:
            raise _bad(f"`{key}` must be {what}.", key)
        echo[key] = value
    if "input" not in body or body["input"] is None:
        raise _bad("'input' is required.", "input")
    items = input_items(body["input"])
    max_tokens = echo["max_output_tokens"]
    if max_tokens is not None and max_tokens < 1:
        raise _bad("`max_output_tokens` must be at least 1.", "max_output_tokens")
    tools = body.get("tools")
    echo["tools"] = _tools(tools) if tools is not None else []
    choice = body.get("tool_choice")
    echo["tool_choice"] = _tool_choice(choice) or "auto"
    text = body.get("text")
    text, response_format = _text_format(text) if text is not None else ({"format": {"type": "text"}}, None)
    echo["text"] = text
    reasoning = echo.pop("reasoning", None) or {}
    effort = reasoning.get("effort")
    if effort is not None and not isinstance(effort, str):
        raise _bad("`reasoning.effort` must be a string.", "reasoning.effort")
    echo["reasoning"] = {"effort": effort, "summary": reasoning.get("summary")}
    stream = echo.pop("stream", False)
    store = echo.setdefault("store", True)
    create = Create(model, stream, store, echo.pop("previous_response_id", None), items, echo)
    echo["previous_response_id"] = create.previous_response_id
    create.native = response_format is None and not any(i["type"] == "reasoning" for i in items)
    chat: dict[str, Any] = {"model": model}
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    for src, dst in _TO_CHAT:
        if echo.get(src) is not None and src in body:
            chat[dst] = body[src]
    if echo["tools"]:
        chat["tools"] = [{"type": "function", "function": {
            k: v for k, v in (("name", t["name"]), ("description", t["description"]), ("parameters", t["parameters"]),
                              ("strict", t["strict"])) if v is not None}} for t in echo["tools"]]
    if choice is not None:
        named = echo["tool_choice"]
        chat["tool_choice"] = named if isinstance(named, str) else {"type": "function", "function": {"name": named["name"]}}
    if response_format is not None:
        chat["response_format"] = response_format
    if effort is not None:
        chat["reasoning_effort"] = effort
    create.chat = chat
    return create


# --- input items -> chat messages ---------------------------------------------------------------

def chat_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation (earlier turns and this input, as Responses items) as chat messages."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        kind = item["type"]
        if kind == "message":
            role = _ROLES[item["role"]]
            content: Any = item["content"]
            if len(content) == 1 and content[0].get("type") == "input_text":  # the usual: one text
                # (items are checked: from this request's input, or kept by history_items)
                content = content[0]["text"]
            elif role == "user":
                content = _user_content(content, "input")
            else:
                content = _text_of(item["content"], "input")
            messages.append({"role": role, "content": content})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
        # reasoning items: the model's earlier thinking is not sent again
    return messages


# --- the answer ------------------------------------------------------------------------------------

def usage(chat_usage: Any, prompt: int | None = None, completion: int | None = None) -> dict[str, Any] | None:
    """Chat ``usage`` (or the runtime's counts) as Responses usage: cached tokens are part of
    ``input_tokens``, as in chat's ``prompt_tokens``."""
    details: Any = {}
    out_details: Any = {}
    if isinstance(chat_usage, dict):
        prompt = chat_usage.get("prompt_tokens", prompt)
        completion = chat_usage.get("completion_tokens", completion)
        details = chat_usage.get("prompt_tokens_details") or {}
        out_details = chat_usage.get("completion_tokens_details") or {}
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    reasoning = out_details.get("reasoning_tokens") if isinstance(out_details, dict) else None
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached if isinstance(cached, int) else 0, "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning if isinstance(reasoning, int) else 0},
            "total_tokens": prompt + completion}


def complete_usage(value: Any) -> Any:
    """A runtime's Responses usage with every field the schema requires (llama-server leaves out
    ``output_tokens_details`` and ``cache_write_tokens``)."""
    if not isinstance(value, dict):
        return value
    out = dict(value)
    details = out.get("input_tokens_details")
    out["input_tokens_details"] = {"cached_tokens": 0, "cache_write_tokens": 0,
                                   **(details if isinstance(details, dict) else {})}
    details = out.get("output_tokens_details")
    out["output_tokens_details"] = {"reasoning_tokens": 0, **(details if isinstance(details, dict) else {})}
    if "total_tokens" not in out and isinstance(out.get("input_tokens"), int) and isinstance(out.get("output_tokens"), int):
        out["total_tokens"] = out["input_tokens"] + out["output_tokens"]
    return out


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "content": [text_part(text)], "role": "assistant"}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "arguments": arguments, "call_id": call_id,
            "name": name}


def reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": text}],
            "status": status}


def terminal(finish_reason: Any) -> tuple[str, dict[str, Any] | None]:
    """A chat finish reason as the Response's status and incomplete_details."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def response_object(rid: str, created_at: int, model: str, echo: dict[str, Any], *, status: str,
                    output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                    incomplete: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """A whole Response object: every field the published schema lists (notes §4.5)."""
    done = status in ("completed", "incomplete", "failed")
    return {"id": rid, "object": "response", "created_at": created_at, "status": status, "background": False,
            "completed_at": int(time.time()) if done else None, "error": error, "incomplete_details": incomplete,
            "instructions": echo["instructions"], "max_output_tokens": echo["max_output_tokens"],
            "metadata": echo["metadata"], "model": model, "output": output,
            "parallel_tool_calls": echo["parallel_tool_calls"], "previous_response_id": echo["previous_response_id"],
            "reasoning": echo["reasoning"], "store": echo["store"], "temperature": echo["temperature"],
            "text": echo["text"], "tool_choice": echo["tool_choice"], "tools": echo["tools"], "top_p": echo["top_p"],
            "truncation": echo["truncation"], "usage": usage, "user": echo["user"]}


def response_json(rid: str, created_at: int, model: str, echo: dict[str, Any], *, status: str, output: bytes,
                  usage: bytes = b"null", incomplete: bytes = b"null", error: bytes = b"null",
                  fragments: list[bytes] | None = None) -> bytes:
    """:func:`response_object` written as JSON directly (the same fields in the same order), the
    request's fields from ``fragments`` when given (:func:`echo_fragments`, made once a request),
    ``output``, ``usage`` and the rest as JSON already: a stream writes it twice."""
    before, after, user = fragments or echo_fragments(echo)
    completed = b"%d" % int(time.time()) if status in ("completed", "incomplete", "failed") else b"null"
    return b"".join((b'{"id":', orjson.dumps(rid), b',"object":"response","created_at":%d,"status":"%s",'
                     b'"background":false,"completed_at":%s,"error":%s,"incomplete_details":%s,'
                     % (created_at, status.encode(), completed, error, incomplete), before, b',"model":',
                     orjson.dumps(model), b',"output":', output, b",", after, b',"usage":', usage, b",", user, b"}"))


def echo_fragments(echo: dict[str, Any]) -> list[bytes]:
    """The request's fields of a Response object as JSON fragments: before ``model``, between
    ``output`` and ``usage``, and after ``usage``."""
    return [orjson.dumps({k: echo[k] for k in keys})[1:-1] for keys in (
        ("instructions", "max_output_tokens", "metadata"),
        ("parallel_tool_calls", "previous_response_id", "reasoning", "store", "temperature", "text", "tool_choice",
         "tools", "top_p", "truncation"), ("user",))]


def output_from_chat(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str, dict[str, Any] | None]:
    """A non-streaming chat completion's first choice as output items, status, incomplete_details."""
    choices = body.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = _mapping(choice.get("message"))
    status, incomplete = terminal(choice.get("finish_reason"))
    item_status = "incomplete" if status == "incomplete" else "completed"
    output: list[dict[str, Any]] = []
    thinking = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(thinking, str) and thinking:
        output.append(reasoning_item(new_id("rs"), thinking, item_status))
    text = message.get("content")
    refusal = message.get("refusal")
    if isinstance(text, str) and text:
        output.append(message_item(new_id("msg"), text, item_status))
    elif isinstance(refusal, str) and refusal:
        output.append({"id": new_id("msg"), "type": "message", "status": item_status, "role": "assistant",
                       "content": [{"type": "refusal", "refusal": refusal}]})
    seen: set[str] = set()
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        if not isinstance(call, dict):
            continue
        fn = _mapping(call.get("function"))
        given, name, args = call.get("id"), fn.get("name"), fn.get("arguments")
        call_id = given if isinstance(given, str) and given not in seen else new_id("call")
        seen.add(call_id)
        output.append(call_item(new_id("fc"), call_id, name if isinstance(name, str) else "",
                                args if isinstance(args, str) else "", "completed"))
    if not output and not isinstance(message.get("tool_calls"), list):
        output.append(message_item(new_id("msg"), "", item_status))
    return output, status, incomplete
