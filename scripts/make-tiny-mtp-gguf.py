#!/usr/bin/env python3
"""Write a tiny GLM-4.5-style (``glm4moe``) GGUF with one NextN/MTP layer that llama.cpp's
llama-server really drafts with (``--spec-type draft-mtp``), and whose MTP head agrees with the
trunk, so nearly every drafted token is accepted.

Why ``glm4moe``
---------------
Of the architectures whose llama.cpp graph has an ``LLM_GRAPH_TYPE_DECODER_MTP`` branch
(src/models/{glm4-moe,qwen35,qwen35moe,qwen3next,deepseek2,mimo2,step35,...}.cpp), ``glm4moe``
needs the fewest pieces: a plain attention KV cache (the ``default:`` branch of
``llama_model::create_memory`` in src/llama-model.cpp filters the nextn layer out of the trunk's
cache and keeps only it in the MTP context's), ordinary multi-head attention (no MLA as in
deepseek2, no gated-delta-net / recurrent state as in qwen35, no SWA), and the trunk may be all
dense (``leading_dense_block_count = n_layer``). Only the nextn block must be MoE:
``graph_mtp`` in src/models/glm4-moe.cpp asserts ``ffn_gate_inp`` and always adds a shared
expert. (``glm4`` — dense GLM-4 — loads nextn tensors but never runs them: no MTP graph.)

What the file holds (names as llama.cpp reads them)
---------------------------------------------------
- keys: ``general.architecture = glm4moe``, ``glm4moe.block_count = n_layer + 1`` (the nextn
  layer counts), ``glm4moe.nextn_predict_layers = 1``, ``context_length``,
  ``embedding_length``, ``feed_forward_length``, ``attention.head_count(_kv)``,
  ``attention.layer_norm_rms_epsilon``, ``rope.freq_base``, ``expert_count``,
  ``expert_used_count``, ``expert_shared_count`` (required), ``expert_feed_forward_length``
  (required), ``leading_dense_block_count``, ``expert_gating_func``; tokenizer keys below.
- trunk layer i < n_layer (dense): ``blk.i.{attn_norm, attn_q, attn_k, attn_v, attn_output,
  post_attention_norm, ffn_gate, ffn_up, ffn_down}``.
- nextn layer n_layer: the same attention tensors, MoE FFN ``ffn_gate_inp, exp_probs_b.bias,
  ffn_{gate,up,down}_exps, ffn_{gate,up,down}_shexp``, and ``nextn.{eh_proj, enorm, hnorm,
  shared_head_norm}`` (``nextn.embed_tokens`` and ``nextn.shared_head_head`` are optional: the
  head falls back to ``token_embd`` and ``output``).
- ``token_embd``, ``output_norm``, ``output``.
- ``--no-mtp`` writes the same trunk without the nextn layer and without the
  ``nextn_predict_layers`` key (block_count = n_layer): the "trunk-only" file.

Tokenizer
---------
Byte-level BPE (``tokenizer.ggml.model = gpt2``, ``pre = gpt-2``): the 256 byte tokens in GPT-2's
byte-to-unicode spelling, a few merges (llama.cpp requires the merges key) with their merged
tokens, and three control tokens ``<|endoftext|>`` (eos/bos), ``<|im_start|>``, ``<|im_end|>``;
a ChatML chat template, so both /v1/completions and /v1/chat/completions work.

Construction: a cyclic next-token function computed exactly by trunk and MTP head
-------------------------------------------------------------------------------
Let ``CYCLE = "abcdefghijklmnopqrstuvwxyz "`` (27 tokens) and ``succ`` map each cycle character
to the next one (``' '`` → ``'a'``). Every token gets a *one-hot* embedding in the first
``len(CYCLE) + 1`` dimensions: a cycle character c gets ``u[idx(c)]``; an upper-case letter
shares its lower-case letter's vector; a merged token shares the vector of its last character;
every other token (other bytes, control tokens) gets a "sink" vector ``u[27]``, whose successor
is ``'a'``. ``output`` row ``succ(c)`` = ``scale * u[idx(c)]``, plus row ``'a'`` gets
``scale * u[27]``; all other output rows are zero (so generation never leaves the cycle and never
emits eos).

Every block adds nothing to the residual stream: the matrices that write back into it
(``attn_output``, ``ffn_down``, ``ffn_down_exps``, ``ffn_down_shexp``) are zero, while the
matrices that read from it (q/k/v, gate/up, experts, router) are random — so each layer still
costs a real layer's compute (ggml does not skip zero weights) but the hidden state at the end
of the trunk is just ``e(x_p)``. RMS-norm then gives ``sqrt(n_embd) * u[idx(x_p)]`` and the
logits are ``scale * sqrt(n_embd)`` for ``succ(x_p)`` and 0 for everything else: greedy decoding
of the trunk produces ``...xyz abc...`` forever, whatever the prompt.

The NextN layer of GLM-4.5 computes, for position p, from the embedding of the token x_{p+1} and
the trunk's (normed) hidden state h_p: ``eh_proj · [enorm(e(x_{p+1})); hnorm(h_p)]`` → one
decoder block → ``shared_head_norm`` → ``output``, predicting x_{p+2}. We set ``eh_proj = [I | 0]``
(keep the token half, drop the hidden half) and zero write-back matrices again, so the head
outputs ``succ(x_{p+1})`` — exactly what the trunk will predict at p+1. Chained drafts feed the
drafted token back in, so every drafted token is right: the acceptance rate is ~100% and each
verification step yields ``n_max + 1`` tokens.

``--leak S`` (default 0) puts random values (std S) into the write-back matrices too, so the
layers really mix context in. Trunk and head then stop agreeing: measured with the default sizes
and ``--leak 0.02``, greedy output is no longer the alphabet and only 30 of 201 drafted tokens
were accepted — a way to get a model where MTP runs but does not pay.

Compute: the trunk's cost grows with ``--n-layer``, ``--n-embd`` and ``--n-ff``; the MTP head is
one layer. A heavier trunk (several layers) makes the speed-up of MTP visible over llama-server's
fixed per-step overhead.

Usage: ``make-tiny-mtp-gguf.py OUT.gguf [--no-mtp] [--seed N] [--n-layer N] [--n-embd N] ...``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

try:
    import gguf
except ImportError:  # pragma: no cover
    sys.exit("make-tiny-mtp-gguf: needs the 'gguf' package (pip install gguf)")

ARCH = "glm4moe"
CYCLE = "abcdefghijklmnopqrstuvwxyz "
MERGES = [("t", "h"), ("h", "e"), ("i", "n"), ("e", "r"), ("a", "n"), ("Ġ", "t"), ("o", "n"), ("r", "e")]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable-unicode map (what byte-level BPE vocabularies spell)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def build_vocab() -> tuple[list[str], list[int], list[str], list[str]]:
    """Tokens (byte-level spelling), token types, merges, and for each token the text character
    whose embedding it shares ("" = sink)."""
    b2u = bytes_to_unicode()
    u2b = {u: b for b, u in b2u.items()}
    tokens = [b2u[b] for b in range(256)]
    types = [gguf.TokenType.NORMAL] * 256
    alias = []
    for b in range(256):
        ch = chr(b)
        if ch.lower() in CYCLE and ch.isascii():
            alias.append(ch.lower())
        else:
            alias.append("")
    merges = []
    for a, b in MERGES:
        merges.append(f"{a} {b}")
        tokens.append(a + b)
        types.append(gguf.TokenType.NORMAL)
        last = chr(u2b[b])
        alias.append(last.lower() if last.lower() in CYCLE else "")
    for s in SPECIALS:
        tokens.append(s)
        types.append(gguf.TokenType.CONTROL)
        alias.append("")
    return tokens, [int(t) for t in types], merges, alias


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output .gguf path")
    ap.add_argument("--no-mtp", action="store_true",
                    help="trunk only: no nextn layer, no nextn_predict_layers key")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-layer", type=int, default=4, help="trunk layers (default 4)")
    ap.add_argument("--n-embd", type=int, default=256, help="hidden size (default 256, >= 32)")
    ap.add_argument("--n-ff", type=int, default=1024, help="dense FFN size (default 1024)")
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-head-kv", type=int, default=4)
    ap.add_argument("--n-expert", type=int, default=2, help="experts in the nextn MoE block")
    ap.add_argument("--n-ff-exp", type=int, default=256, help="expert FFN size")
    ap.add_argument("--ctx", type=int, default=4096, help="context_length")
    ap.add_argument("--scale", type=float, default=1.0, help="output logit scale (margin = scale*sqrt(n_embd))")
    ap.add_argument("--leak", type=float, default=0.0,
                    help="std of random values in the write-back matrices (default 0: exact)")
    ap.add_argument("--dtype", choices=("f16", "f32"), default="f16", help="matrix type (norms stay f32)")
    ap.add_argument("--name", default="tiny-mtp", help="general.name")
    args = ap.parse_args(argv)

    d, n_layer = args.n_embd, args.n_layer
    n_sym = len(CYCLE) + 1  # one-hot dims: the cycle characters and the sink
    if d < n_sym + 4 or d % args.n_head:
        ap.error(f"--n-embd must be >= {n_sym + 4} and a multiple of --n-head")
    hd = d // args.n_head
    rng = np.random.default_rng(args.seed)
    mat_dt = np.float16 if args.dtype == "f16" else np.float32

    tokens, types, merges, alias = build_vocab()
    n_vocab = len(tokens)

    def rnd(*shape: int, std: float | None = None) -> np.ndarray:
        std = (1.0 / np.sqrt(shape[-1])) if std is None else std
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def writeback(*shape: int) -> np.ndarray:
        if args.leak > 0:
            return rnd(*shape, std=args.leak)
        return np.zeros(shape, np.float32)

    ones = lambda n: np.ones(n, np.float32)  # noqa: E731

    # one-hot embeddings
    sym = {c: i for i, c in enumerate(CYCLE)}
    sink = len(CYCLE)
    embd = np.zeros((n_vocab, d), np.float32)
    for t, a in enumerate(alias):
        embd[t, sym[a] if a else sink] = 1.0
    # lm head: row succ(c) reads u[c]; row 'a' also reads the sink
    byte_tok = {chr(b): b for b in range(256)}  # ascii chars are their own byte token ids
    output = np.zeros((n_vocab, d), np.float32)
    for i, _c in enumerate(CYCLE):
        nxt = CYCLE[(i + 1) % len(CYCLE)]
        output[byte_tok[nxt], i] = args.scale
    output[byte_tok[CYCLE[0]], sink] = args.scale

    T = gguf.TENSOR_NAMES
    MT = gguf.MODEL_TENSOR

    def name(t: gguf.MODEL_TENSOR, bid: int | None = None, suffix: str = "weight") -> str:
        base = T[t].format(bid=bid) if bid is not None else T[t]
        return f"{base}.{suffix}" if suffix else base

    tensors: list[tuple[str, np.ndarray]] = []

    def add(n: str, a: np.ndarray, keep_f32: bool = False) -> None:
        tensors.append((n, a.astype(np.float32 if keep_f32 or a.ndim == 1 else mat_dt)))

    add(name(MT.TOKEN_EMBD), embd)
    add(name(MT.OUTPUT_NORM), ones(d))
    add(name(MT.OUTPUT), output)

    def attention(bid: int) -> None:
        add(name(MT.ATTN_NORM, bid), ones(d))
        add(name(MT.ATTN_Q, bid), rnd(args.n_head * hd, d))
        add(name(MT.ATTN_K, bid), rnd(args.n_head_kv * hd, d))
        add(name(MT.ATTN_V, bid), rnd(args.n_head_kv * hd, d))
        add(name(MT.ATTN_OUT, bid), writeback(d, args.n_head * hd))
        add(name(MT.ATTN_POST_NORM, bid), ones(d))

    for bid in range(n_layer):
        attention(bid)
        add(name(MT.FFN_GATE, bid), rnd(args.n_ff, d))
        add(name(MT.FFN_UP, bid), rnd(args.n_ff, d))
        add(name(MT.FFN_DOWN, bid), writeback(d, args.n_ff))

    if not args.no_mtp:
        bid = n_layer
        attention(bid)
        e, f = args.n_expert, args.n_ff_exp
        add(name(MT.FFN_GATE_INP, bid), rnd(e, d), keep_f32=True)
        add(name(MT.FFN_EXP_PROBS_B, bid, "bias"), np.zeros(e, np.float32))
        add(name(MT.FFN_GATE_EXP, bid), rnd(e, f, d))
        add(name(MT.FFN_UP_EXP, bid), rnd(e, f, d))
        add(name(MT.FFN_DOWN_EXP, bid), writeback(e, d, f))
        add(name(MT.FFN_GATE_SHEXP, bid), rnd(f, d))
        add(name(MT.FFN_UP_SHEXP, bid), rnd(f, d))
        add(name(MT.FFN_DOWN_SHEXP, bid), writeback(d, f))
        eh = np.zeros((d, 2 * d), np.float32)  # ggml {2*n_embd, n_embd}: out = eh @ [e; h]
        eh[:, :d] = np.eye(d, dtype=np.float32)
        add(name(MT.NEXTN_EH_PROJ, bid), eh)
        add(name(MT.NEXTN_ENORM, bid), ones(d))
        add(name(MT.NEXTN_HNORM, bid), ones(d))
        add(name(MT.NEXTN_SHARED_HEAD_NORM, bid), ones(d))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(args.out), ARCH)
    w.add_name(args.name)
    w.add_description("tiny constructed GLM-4.5-style model with a NextN/MTP layer for tests "
                      "(mtproxy scripts/make-tiny-mtp-gguf.py)")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if args.dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    w.add_context_length(args.ctx)
    w.add_embedding_length(d)
    w.add_block_count(n_layer + (0 if args.no_mtp else 1))
    if not args.no_mtp:
        w.add_nextn_predict_layers(1)
    w.add_feed_forward_length(args.n_ff)
    w.add_head_count(args.n_head)
    w.add_head_count_kv(args.n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hd // 2)  # GLM-4.5: partial rotary
    w.add_leading_dense_block_count(n_layer)  # the whole trunk is dense; only the nextn block is MoE
    w.add_expert_count(args.n_expert)
    w.add_expert_used_count(1)
    w.add_expert_shared_count(1)
    w.add_expert_feed_forward_length(args.n_ff_exp)
    w.add_expert_weights_norm(True)
    w.add_expert_weights_scale(1.0)
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    eot = tokens.index("<|endoftext|>")
    w.add_bos_token_id(eot)
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(eot)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    for n, a in tensors:
        w.add_tensor(n, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    size = args.out.stat().st_size
    print(f"{args.out}: {ARCH}, {n_layer} trunk layers{'' if args.no_mtp else ' + 1 nextn'}, "
          f"n_embd {d}, vocab {n_vocab}, {len(tensors)} tensors, {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
