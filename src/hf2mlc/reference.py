"""GPT-NeoX in float32, read layer by layer straight from the checkpoint: the reference every check uses.

Loading transformers' model whole costs the model's size in float32 (14–17 GB at LINE's 3.6B) for every
check and every evaluation.  The forward pass does not need that: it is a stack of layers, and all
tokens of a text can pass one layer before the next layer's weights are read.  So here only one layer's
weights are in float32 at a time (≈ 450 MB at 3.6B), and what is kept across layers is the residual
stream, ``[tokens, hidden]``.  Inside a layer attention is computed in query blocks against every key
of the sequence under a causal mask, and the output head in token blocks, so no ``[tokens, tokens]``
or ``[tokens, vocab]`` array of the whole text is ever built unless the caller asks for the logits.

Weights come through a *weight source* (:class:`CheckpointWeights` by default: hf2mlc's streaming
loader, one tensor read at a time), a callable ``name -> float32 array`` under Hugging Face's
canonical names and layout.  The host check passes a source that dequantizes a tensor cache instead,
so the same forward pass is the reference for "is the compiled model right?" and for "what did
quantization cost?".

Several documents can go through one pass (:func:`stream_logit_blocks` with ``segments``): each is
its own sequence (positions restart at 0, no attention across documents), and the checkpoint is read
once for all of them.

The computation follows transformers' ``GPTNeoXForCausalLM`` in float32 (same operation order where it
matters: rotary on the first ``rotary_dim`` channels of each head by ``rotate_half``, scores scaled by
``head_dim ** -0.5``, softmax in float32); tests hold the logits to transformers' within 1e-5 relative.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .model.gpt_neox.config import GELU_TANH, GPTNeoXConfig

logger = logging.getLogger(__name__)

#: The four linears of a layer, under their Hugging Face names (what ``observe`` is called with).
LINEARS = ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
#: ``observe``'s layer index for the output head.
HEAD_LAYER = -1
HEAD_NAME = "embed_out"

#: Elements of one block of attention scores ([heads, queries, keys] float32: 32M elements = 128 MB).
ATTENTION_BLOCK_ELEMENTS = 1 << 25
#: Tokens per block of the output head ([block, vocab] float32: 512 × 51200 = 105 MB at LINE's vocabulary).
HEAD_BLOCK_TOKENS = 512

#: ``observe(layer_index, linear_name, x)``: the float32 input ``x`` [tokens, in_features] of a linear.
Observer = Callable[[int, str, np.ndarray], None]
#: A weight source: float32 array of one tensor by canonical Hugging Face name.
WeightSource = Callable[[str], np.ndarray]


def _torch():
    import torch

    return torch


class CheckpointWeights:
    """The checkpoint's tensors as float32, one at a time, by canonical Hugging Face name.

    Wraps :class:`hf2mlc.model.gpt_neox.loader.SourceReader` (shape checks against config.json, the tied
    ``embed_out`` fallback), without MLC's qkv reorder: the forward pass uses Hugging Face's layout.
    """

    def __init__(self, model_dir: Path, config: GPTNeoXConfig) -> None:
        from .model.gpt_neox.loader import GPTNeoXCheckpoint, SourceReader

        self._weights = GPTNeoXCheckpoint(model_dir)
        self._reader = SourceReader(self._weights, config)

    def __call__(self, name: str) -> np.ndarray:
        array = self._reader.read(name)
        return array if array.dtype == np.float32 else array.astype(np.float32)

    def close(self) -> None:
        self._weights.close()


def stream_forward(
    model_dir: Path,
    input_ids: np.ndarray,
    *,
    observe: Observer | None = None,
    weights: WeightSource | None = None,
) -> np.ndarray:
    """float32 logits ``[tokens, vocab]`` of one sequence, read layer by layer from ``model_dir``.

    ``observe`` sees the input of every linear (for calibration); ``weights`` replaces the checkpoint
    as the source of the numbers (e.g. dequantized weights).  For long texts use
    :func:`stream_logit_blocks`, which never holds the whole ``[tokens, vocab]``.
    """
    ids = np.asarray(input_ids).reshape(-1)
    blocks = [block for _, block in stream_logit_blocks(model_dir, [ids], observe=observe, weights=weights)]
    return np.concatenate(blocks, axis=0)


def stream_logit_blocks(
    model_dir: Path,
    segments: Sequence[Sequence[int] | np.ndarray],
    *,
    observe: Observer | None = None,
    weights: WeightSource | None = None,
    block_tokens: int = HEAD_BLOCK_TOKENS,
) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, logits[block, vocab])`` over all tokens of ``segments`` (concatenated), in order.

    Each segment is an independent sequence (its own positions from 0, attending only to itself).
    """
    model_dir = Path(model_dir)
    config = GPTNeoXConfig.from_file(model_dir)
    own = weights is None
    source: WeightSource = CheckpointWeights(model_dir, config) if weights is None else weights
    try:
        hidden = final_hidden_states(config, source, segments, observe=observe)
        yield from _head_blocks(config, source, hidden, observe=observe, block_tokens=block_tokens)
    finally:
        if own:
            source.close()  # type: ignore[attr-defined]


def final_hidden_states(
    config: GPTNeoXConfig,
    weights: WeightSource,
    segments: Sequence[Sequence[int] | np.ndarray],
    *,
    observe: Observer | None = None,
    cache: KVCache | None = None,
    progress: bool = True,
) -> np.ndarray:
    """The final-layer-normed residual stream ``[tokens, hidden]`` (float32) of the concatenated segments.

    With ``cache``, segment ``i`` continues the sequence ``cache`` holds for it (its positions go on
    from there, it attends to the cached keys too) and its new keys and values are appended: one pass
    over the weights per generated token, for every sequence at once.
    """
    torch = _torch()
    arrays = [np.asarray(s, dtype=np.int64).reshape(-1) for s in segments]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError("every segment needs at least one token")
    ids = np.concatenate(arrays)
    if ids.min() < 0 or ids.max() >= config.vocab_size:
        raise ValueError(f"token ids must be in [0, {config.vocab_size}); got {ids.min()}..{ids.max()}")
    past = cache.lengths(len(arrays)) if cache is not None else [0] * len(arrays)
    positions = np.concatenate([np.arange(p, p + a.size) for p, a in zip(past, arrays)])
    bounds = np.concatenate([[0], np.cumsum([a.size for a in arrays])])
    spans = [(int(bounds[i]), int(bounds[i + 1])) for i in range(len(arrays))]

    with torch.inference_mode():
        embed = weights("gpt_neox.embed_in.weight")
        x = torch.from_numpy(np.ascontiguousarray(embed[ids]))
        del embed
        cos, sin = _rotary_tables(config, torch.from_numpy(positions))
        began = time.monotonic()
        for layer in range(config.num_hidden_layers):
            x = _layer(config, weights, layer, x, cos, sin, spans, observe, cache)
            done = layer + 1
            left = (time.monotonic() - began) / done * (config.num_hidden_layers - done)
            if progress:
                logger.info("reference: layer %d/%d, about %.0f s left", done, config.num_hidden_layers, left)
        if cache is not None:
            cache.advance([a.size for a in arrays])
        w, b = _param(weights, "gpt_neox.final_layer_norm")
        x = torch.nn.functional.layer_norm(x, (config.hidden_size,), w, b, config.layer_norm_eps)
    return x.numpy()


class KVCache:
    """Keys and values of every layer for a batch of sequences that grow by generation."""

    def __init__(self) -> None:
        self.keys: dict[tuple[int, int], Any] = {}
        self.values: dict[tuple[int, int], Any] = {}
        self._lengths: list[int] = []

    def lengths(self, count: int) -> list[int]:
        if not self._lengths:
            self._lengths = [0] * count
        if len(self._lengths) != count:
            raise ValueError(f"the cache holds {len(self._lengths)} sequences, not {count}")
        return list(self._lengths)

    def advance(self, added: Sequence[int]) -> None:
        self._lengths = [n + int(a) for n, a in zip(self._lengths, added)]

    def extend(self, layer: int, segment: int, k, v):
        """Cached plus new keys/values [tokens, heads, head_dim] of one sequence, stored for the next step."""
        torch = _torch()
        key = (layer, segment)
        if key in self.keys:
            k, v = torch.cat((self.keys[key], k)), torch.cat((self.values[key], v))
        self.keys[key], self.values[key] = k, v
        return k, v


def _param(weights: WeightSource, prefix: str):
    torch = _torch()
    return torch.from_numpy(weights(f"{prefix}.weight")), torch.from_numpy(weights(f"{prefix}.bias"))


def _rotary_tables(config: GPTNeoXConfig, positions):
    """cos/sin [tokens, rotary_dim] exactly as transformers builds them (float32 throughout)."""
    torch = _torch()
    dim = config.rotary_dim
    inv_freq = 1.0 / (config.rotary_emb_base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate(x, cos, sin, rotary_dim: int):
    """Rotary embedding on the first ``rotary_dim`` channels of x [tokens, heads, head_dim]."""
    torch = _torch()
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat((rot * c + rotated * s, rest), dim=-1)


def _linear(weights: WeightSource, layer: int, name: str, x, observe: Observer | None):
    torch = _torch()
    if observe is not None:
        observe(layer, name, x.numpy())
    w, b = _param(weights, f"gpt_neox.layers.{layer}.{name}")
    return torch.addmm(b, x, w.t())


def _attention(q, k, v):
    """Causal attention of new queries q [n, heads, d] on keys/values [past + n, heads, d], in query blocks.

    Query ``i`` sits at position ``past + i`` and sees keys ``0 .. past + i``; blocks bound the scores
    array to :data:`ATTENTION_BLOCK_ELEMENTS`.
    """
    torch = _torch()
    n, heads, head_dim = q.shape
    total = k.shape[0]
    past = total - n
    out = torch.empty_like(q)
    qh, kh, vh = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [heads, tokens, head_dim]
    block = max(1, ATTENTION_BLOCK_ELEMENTS // max(1, heads * total))
    for q0 in range(0, n, block):
        q1 = min(n, q0 + block)
        keys = past + q1  # later keys are masked for every query of the block
        scores = torch.matmul(qh[:, q0:q1], kh[:, :keys].transpose(1, 2)) * head_dim**-0.5
        later = torch.arange(keys)[None, :] > (past + torch.arange(q0, q1))[:, None]
        scores = scores.masked_fill(later[None], torch.finfo(scores.dtype).min)
        out[q0:q1] = torch.matmul(torch.softmax(scores, dim=-1), vh[:, :keys]).transpose(0, 1)
    return out


def _layer(config: GPTNeoXConfig, weights: WeightSource, layer: int, x, cos, sin, spans, observe, cache):
    torch = _torch()
    f = torch.nn.functional
    h, heads, head_dim = config.hidden_size, config.num_attention_heads, config.head_dim
    prefix = f"gpt_neox.layers.{layer}"
    tokens = x.shape[0]

    w, b = _param(weights, f"{prefix}.input_layernorm")
    normed = f.layer_norm(x, (h,), w, b, config.layer_norm_eps)
    qkv = _linear(weights, layer, LINEARS[0], normed, observe).view(tokens, heads, 3 * head_dim)
    del normed
    q = _rotate(qkv[..., :head_dim], cos, sin, config.rotary_dim)
    k = _rotate(qkv[..., head_dim : 2 * head_dim], cos, sin, config.rotary_dim)
    v = qkv[..., 2 * head_dim :].contiguous()
    del qkv
    context = torch.empty_like(q)
    for segment, (s0, s1) in enumerate(spans):
        ks, vs = k[s0:s1], v[s0:s1]
        if cache is not None:
            ks, vs = cache.extend(layer, segment, ks, vs)
        context[s0:s1] = _attention(q[s0:s1], ks, vs)
    del q, k, v
    attn = _linear(weights, layer, LINEARS[1], context.reshape(tokens, h), observe)
    del context

    w, b = _param(weights, f"{prefix}.post_attention_layernorm")
    if not config.use_parallel_residual:
        x = attn + x
        del attn
    mlp_in = f.layer_norm(x, (h,), w, b, config.layer_norm_eps)
    up = _linear(weights, layer, LINEARS[2], mlp_in, observe)
    del mlp_in
    up = f.gelu(up, approximate="tanh" if config.hidden_act in GELU_TANH else "none")
    down = _linear(weights, layer, LINEARS[3], up, observe)
    del up
    if config.use_parallel_residual:
        return down + attn + x
    return down + x


def _head_blocks(config: GPTNeoXConfig, weights: WeightSource, hidden: np.ndarray, *, observe, block_tokens: int):
    torch = _torch()
    if observe is not None:
        observe(HEAD_LAYER, HEAD_NAME, hidden)
    head = torch.from_numpy(weights("embed_out.weight"))
    x = torch.from_numpy(hidden)
    blocks = math.ceil(hidden.shape[0] / block_tokens)
    with torch.inference_mode():
        for i in range(blocks):
            start = i * block_tokens
            yield start, torch.matmul(x[start : start + block_tokens], head.t()).numpy()


def greedy_generate(
    model_dir: Path,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_token_ids: Sequence[Sequence[int]],
    weights: WeightSource | None = None,
) -> list[list[int]]:
    """Greedy continuations of every prompt (each ends after its first stop token, which is kept).

    All prompts advance together, one pass over the weights per generated token (with a KV cache),
    so answering many prompts costs about what answering one does.
    """
    model_dir = Path(model_dir)
    config = GPTNeoXConfig.from_file(model_dir)
    own = weights is None
    source: WeightSource = CheckpointWeights(model_dir, config) if weights is None else weights
    torch = _torch()
    answers: list[list[int]] = [[] for _ in prompts]
    stops = [set(int(t) for t in ids) for ids in stop_token_ids]
    cache = KVCache()
    step: list[Sequence[int]] = list(prompts)
    began = time.monotonic()
    try:
        for done in range(max_new_tokens):
            hidden = final_hidden_states(config, source, step, cache=cache, progress=False)
            ends = np.cumsum([len(s) for s in step]) - 1
            head = torch.from_numpy(source("embed_out.weight"))
            with torch.inference_mode():
                logits = torch.matmul(torch.from_numpy(hidden[ends]), head.t()).numpy()
            del head
            for i, row in enumerate(logits):
                if not answers[i] or answers[i][-1] not in stops[i]:
                    answers[i].append(int(np.argmax(row)))
            # Finished answers keep stepping (on their last token) so the cache stays one batch; ignored.
            step = [[a[-1]] for a in answers]
            if all(a[-1] in s for a, s in zip(answers, stops)):
                break
            left = (time.monotonic() - began) / (done + 1) * (max_new_tokens - done - 1)
            logger.info("reference answers: token %d/%d, at most %.0f s left", done + 1, max_new_tokens, left)
    finally:
        if own:
            source.close()  # type: ignore[attr-defined]
    return answers


class TensorCacheWeights:
    """The numbers a converted tensor cache holds, as a weight source in Hugging Face's names and layout.

    Quantized weights are dequantized with :func:`hf2mlc.quantization.group.dequantize` (exactly what the
    model library computes), stored float16/bfloat16 tensors widened to float32, and MLC's fused-qkv row
    order undone, one tensor at a time.  The forward pass on this source is the reference a correct build
    of any quantization agrees with to float16 rounding: it separates "the compiled model is right" from
    "quantization lost accuracy".
    """

    def __init__(self, weights_dir: Path, config: GPTNeoXConfig, quantization: str) -> None:
        import json

        from .quantization import get_quantization
        from .tensor_cache import CACHE_JSON

        self.dir = Path(weights_dir)
        self.config = config
        self.q = get_quantization(quantization)
        index = json.loads((self.dir / CACHE_JSON).read_text(encoding="utf-8"))
        self.records = {rec["name"]: (shard["dataPath"], rec) for shard in index["records"] for rec in shard["records"]}

    def _read(self, name: str) -> np.ndarray:
        from .tensor_cache import decode_record

        path, rec = self.records[name]
        with open(self.dir / path, "rb") as handle:
            handle.seek(rec["byteOffset"])
            return decode_record(handle.read(rec["nbytes"]), rec)

    def __call__(self, name: str) -> np.ndarray:
        from .quantization.group import dequantize

        base = name.removesuffix(".weight")
        if f"{base}.q_weight" in self.records:
            weight, scale = self._read(f"{base}.q_weight"), self._read(f"{base}.q_scale")
            if self.q.linear_weight_layout == "KN" and base != "gpt_neox.embed_in":
                weight, scale = weight.T, scale.T
            size = self.config.intermediate_size if base.endswith("dense_4h_to_h") else self.config.hidden_size
            array = dequantize(weight, scale, self.q, axis=-1, size=size)
        elif name in self.records:
            array = self._read(name)
        else:
            raise KeyError(f"{self.dir}: no tensor {name!r} in the tensor cache")
        array = np.asarray(array, dtype=np.float32)
        if ".attention.query_key_value." in name:  # MLC's [(q|k|v), head, d] back to [head, (q|k|v), d]
            heads = self.config.num_attention_heads
            rest = array.shape[1:]
            array = array.reshape(3, heads, -1, *rest).swapaxes(0, 1).reshape(array.shape)
        return np.ascontiguousarray(array)

    def close(self) -> None:
        pass
