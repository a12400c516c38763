"""Which runtimes can run Multi-Token Prediction, since when, how it is switched on, and where
each claim comes from.

Source of record: docs/runtimes.md §1 (gathered from each runtime's own source).
Several popular summary tables are wrong here: llama.cpp got MTP in PR #22673 / b9180 (not
#5742 / b9148), vLLM has had it since v0.7.3 (not v0.20), Ollama runs it since v0.30 through
llama-server (not "partial"), MLX-LM has no native MTP (not "planned and working").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Level = Literal["yes", "some", "no", "unknown"]


@dataclass(frozen=True, slots=True)
class Support:
    runtime: str
    level: Level  # yes: any MTP family it loads; some: only `families`; no; unknown
    since: str | None  # first version/build with MTP, in the runtime's own version scheme
    switch: str  # how it is switched on
    sources: tuple[str, ...]
    families: tuple[str, ...] = ()  # for level "some": the families it runs MTP for
    not_families: tuple[str, ...] = ()  # families known not to work
    notes: str = ""

    def version_ok(self, version: str | None) -> bool | None:
        """Whether ``version`` is at least ``since``; None when either is unknown."""
        if self.since is None or version is None:
            return None
        have, need = version_key(version), version_key(self.since)
        if have is None or need is None or have[0] != need[0]:
            return None
        return have >= need


REGISTRY: dict[str, Support] = {s.runtime: s for s in (
    Support(
        "vllm", "yes", "0.7.3",
        "--speculative-config '{\"method\":\"mtp\",\"num_speculative_tokens\":N}' "
        "(old per-family names such as deepseek_mtp, qwen3_next_mtp are rewritten to mtp)",
        ("vllm-project/vllm PR #12755 (DeepSeek MTP, v0.7.3)",
         "vllm/config/speculative.py (generic method \"mtp\" since v0.11)"),
        notes="DeepSeek-V4.1 uses method \"dspark\" instead",
    ),
    Support(
        "sglang", "yes", None,
        "--speculative-algorithm EAGLE (NEXTN is an alias) --speculative-num-steps N "
        "--speculative-eagle-topk K --speculative-num-draft-tokens T; no draft model path needed",
        ("sgl-project/sglang PR #3582 (DeepSeek NextN, 2025-02)",
         "docs/advanced_features/speculative_decoding.md"),
        notes="first release with it not recorded; any reported version is taken as capable",
    ),
    Support(
        "llamacpp", "yes", "b9180",
        "--spec-type draft-mtp [--spec-draft-n-max N] [--spec-draft-model mtp.gguf]; "
        "the default --spec-type none never turns it on",
        ("ggml-org/llama.cpp PR #22673 (release b9180, 2026-05-16)", "tools/server/README.md",
         "more families: #23398 Gemma 4, #24868 GLM-4.7-Flash, #25589 Qwen3-Next, "
         "#25784 DeepSeek-V4, #26534 GLM-4.5"),
    ),
    Support(
        "ollama", "yes", "0.30.0",
        "automatic for a GGUF with <arch>.nextn_predict_layers > 0 (Ollama passes "
        "--spec-type draft-mtp to its llama-server); drafting length from draft_num_predict "
        "(Modelfile PARAMETER or request options)",
        ("ollama/ollama llm/llama_server.go", "docs/modelfile.mdx", "server/routes.go"),
        notes="sources disagree on the draft_num_predict default (0 in routes.go at v0.30, 4 in "
              "later notes, PR #16031): probe /api/show parameters rather than assume",
    ),
    Support(
        "trtllm", "some", None,
        "trtllm-serve --config x.yaml with speculative_config: {decoding_type: MTP, max_draft_len: N} "
        "(MTPDecodingConfig)",
        ("NVIDIA/TensorRT-LLM MTPDecodingConfig (tensorrt_llm/llmapi/llm_args.py)",
         "issues #10313, #13819 (Qwen3-Next, Qwen3.5 MTP not supported)"),
        families=("deepseek", "glm"),
        not_families=("qwen3-next", "qwen3.5", "qwen3.6"),
        notes="first version not verified",
    ),
    Support(
        "mlx", "no", None,
        "none: MTP weights are dropped on load; only separate draft-model speculation "
        "(mlx_lm.server --draft-model M --num-draft-tokens N, which makes the server non-batching)",
        ("ml-explore/mlx-lm mainline 0.31.x", "ml-explore/mlx-lm PR #990 (native MTP, still open)"),
    ),
    Support(
        "llama-cpp-python", "no", None,
        "packaged server: none, only prompt-lookup decoding (draft_model: prompt-lookup-decoding, "
        "draft_model_num_pred_tokens); the examples/server script takes \"draft_model\":\"draft-mtp\" "
        "since 0.3.27",
        ("abetlen/llama-cpp-python llama_cpp/server/settings.py", "PR #2174 (examples/server, 0.3.27)"),
    ),
    Support(
        "openai", "unknown", None,
        "a generic OpenAI-compatible server: whatever it runs is not visible to the proxy",
        (),
    ),
)}

_BUILD = re.compile(r"^b(\d+)")
_PEP440ISH = re.compile(r"^v?(\d+(?:\.\d+)*)")


def version_key(version: str) -> tuple[str, tuple[int, ...]] | None:
    """A comparable key: ("build", (N,)) for llama.cpp's b<N>, ("release", (x, y, z)) for
    PEP 440-like versions (pre-release and local parts ignored). None when unparseable."""
    version = version.strip()
    if m := _BUILD.match(version):
        build = int(m.group(1))
        # llama.cpp numbers builds by git commit count; a build from a source tarball without
        # git history (as vendored in llama-cpp-python's sdist) reports b1: not a release number.
        return ("build", (build,)) if build >= 100 else None
    if m := _PEP440ISH.match(version):
        parts = tuple(int(p) for p in m.group(1).split("."))
        while len(parts) > 1 and parts[-1] == 0:
            parts = parts[:-1]
        return "release", parts
    return None
