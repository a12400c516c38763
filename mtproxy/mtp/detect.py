"""Is a model MTP-trained? Read from the files that define it, or from its family name.

HF ``config.json`` keys per vLLM's SpeculativeConfig.hf_config_override and
docs/runtimes.md §2; GGUF metadata per gguf-py (``Keys.LLM.NEXTN_PREDICT_LAYERS``
= ``<arch>.nextn_predict_layers``, tensors ``blk.N.nextn.*``; legacy Qwen3.5 GGUFs carry
``mtp.*`` tensors without the key). A config key is not proof the weights are there: a GGUF
converted with ``--no-mtp`` keeps the architecture but drops the layers, which the GGUF check sees.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Trained:
    """Whether a model is MTP-trained, and how that was decided."""

    mtp: bool | None  # None: nothing said either way
    source: str  # config | runtime | file | family | unknown
    why: str


UNKNOWN = Trained(None, "unknown", "no config flag, runtime report, model file or known family")

# (config.json path, what it means). Any of them > 0 means MTP layers are declared.
_HF_KEYS = (
    (("num_nextn_predict_layers",), "DeepSeek-V3/V4, GLM-4.5+, MiMo, Qwen3-Next, …"),
    (("mtp_num_hidden_layers",), "Qwen3.5/3.6, Qwen3-Next"),
    (("text_config", "num_nextn_predict_layers"), "Kimi-K3"),
    (("text_config", "mtp_num_hidden_layers"), "Qwen3.5/3.6 multimodal"),
    (("num_mtp_modules",), "MiniMax-M3"),
    (("mtp_config", "num_nextn_predict_layers"), "Inkling"),
)


def from_hf_config(config: dict[str, Any]) -> Trained | None:
    for path, family in _HF_KEYS:
        value: Any = config
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int) and not isinstance(value, bool):
            key = ".".join(path)
            if value > 0:
                return Trained(True, "file", f"config.json {key} = {value} ({family})")
            return Trained(False, "file", f"config.json {key} = 0")
    return None


def from_gguf(path: Path) -> Trained | None:
    from gguf import GGUFReader  # imported here: reading a GGUF is rare and gguf pulls numpy

    reader = GGUFReader(path)
    arch_field = reader.get_field("general.architecture")
    arch = arch_field.contents() if arch_field is not None else None
    if arch:
        field = reader.get_field(f"{arch}.nextn_predict_layers")
        if field is not None:
            layers = int(field.contents())
            nextn_tensors = sum(1 for t in reader.tensors if ".nextn." in t.name)
            if layers > 0 and nextn_tensors == 0:
                return Trained(False, "file", f"GGUF {arch}.nextn_predict_layers = {layers} but no "
                                              "blk.N.nextn.* tensors (converted with --no-mtp?)")
            return Trained(layers > 0, "file", f"GGUF {arch}.nextn_predict_layers = {layers}")
    if any(t.name.startswith("mtp.") for t in reader.tensors):
        return Trained(True, "file", "GGUF carries legacy mtp.* tensors")
    return Trained(False, "file", f"GGUF ({arch or 'unknown architecture'}) has no NextN/MTP layers")


_CACHE: dict[tuple[str, int, int], Trained | None] = {}


async def from_path_async(path: str | Path) -> Trained | None:
    """``from_path`` in a worker thread, cached by (path, mtime, size): reading a large GGUF's
    header with gguf takes seconds, which must never stall the event loop, and files do not change
    between probes."""
    import asyncio

    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError:
        return None
    key = (str(p), st.st_mtime_ns, st.st_size)
    if key not in _CACHE:
        _CACHE[key] = await asyncio.to_thread(from_path, p)
    return _CACHE[key]


def from_path(path: str | Path) -> Trained | None:
    """A GGUF file, an HF ``config.json``, or a model directory holding either (blocking: use
    ``from_path_async`` on the event loop)."""
    p = Path(path).expanduser()
    try:
        if p.is_dir():
            if (p / "config.json").is_file():
                return from_path(p / "config.json")
            ggufs = sorted(p.glob("*.gguf"))
            return from_gguf(ggufs[0]) if ggufs else None
        if p.suffix == ".gguf" and p.is_file():
            return from_gguf(p)
        if p.name.endswith(".json") and p.is_file():
            data = json.loads(p.read_text(encoding="utf-8"))
            return from_hf_config(data) if isinstance(data, dict) else None
    except Exception as exc:  # the gguf reader raises what a broken file makes it (IndexError
        # on a truncated one: a download still under way), and a probe must never fail for it
        return Trained(None, "file", f"cannot read {p}: {type(exc).__name__}: {exc}")
    return None


# Known MTP-trained families, matched against a model name with separators folded to "-".
_FAMILIES = (
    (r"deepseek-(v3|r1|v4)", "DeepSeek-V3/R1/V4"),
    (r"glm-?(4\.[5-9]|5)", "GLM-4.5+"),
    (r"qwen3\.[56]", "Qwen3.5/3.6"),
    (r"qwen3-next", "Qwen3-Next"),
    (r"mimo", "MiMo"),
    (r"kimi-k3", "Kimi-K3"),
    (r"minimax-m3", "MiniMax-M3"),
    (r"longcat-flash", "LongCat-Flash"),
)


def family_of(model: str) -> str | None:
    name = re.sub(r"[\s_:/]+", "-", model.lower())
    for pattern, family in _FAMILIES:
        if re.search(pattern, name):
            return family
    return None


def from_family(model: str) -> Trained | None:
    family = family_of(model)
    return Trained(True, "family", f"{family} family is MTP-trained") if family else None
