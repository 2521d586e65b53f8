"""The conversion baseline: a plain, per-tensor numpy implementation of MLC's weight conversion.

Written for the benchmark, independently of hf2mlc's converter, the way one would write it first:
open each safetensors file with ``safe_open``, take one tensor at a time, reorder the fused qkv rows,
quantize with float16 numpy arithmetic (numpy emulates float16: every operation computes in float32
and rounds to float16, which is exactly the rounding MLC's TVM quantizer does, so the bytes are
MLC's), pack 8 nibbles per uint32 in a loop over the 8 positions, and write the result with the
md5 that MLC's format records for every shard.

It serves twice: as the speed baseline that the fast converter is measured against (issue 6 asks for
"a plain, per-tensor numpy implementation of the same quantization"), and as an independent second
implementation whose bytes the fast converter must reproduce exactly.

The arithmetic, per group of ``group_size`` along the reduction axis K (mlc-format.md):
``scale = max|w| / 7``; ``q = clip(round(w / scale + 7), 0, 14)`` with ``w / scale`` and ``+ 7`` each
rounded to float16 and ``round`` half to even; TVM's clip is ``select``-based, so NaN (a 0/0 of an
all-zero group) becomes 0 and +inf 14 (``np.fmax``/``np.fmin`` behave that way).  Element ``r`` of 8
goes to bits ``4r``.  Linear weights in layout "KN" are transposed after packing; embeddings never.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

GROUP_SIZE = 32
BITS = 4
PER_WORD = 32 // BITS
MAX_INT = 2 ** (BITS - 1) - 1


def plain_quantize(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, K] -> (q_weight uint32 [N, K/8], q_scale float16 [N, K/32]), along K, float16 arithmetic."""
    w = weight.astype(np.float16)
    n, k = w.shape
    if k % GROUP_SIZE:
        raise ValueError("the benchmark baseline handles K divisible by 32 only (LINE's shapes are)")
    groups = w.reshape(n, k // GROUP_SIZE, GROUP_SIZE)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale = np.abs(groups).max(axis=-1) / np.float16(MAX_INT)
        t = groups / scale[..., None]
        t = t + np.float16(MAX_INT)
    q = np.fmin(np.fmax(np.round(t), np.float16(0)), np.float16(2 * MAX_INT)).astype(np.uint32)
    q = q.reshape(n, k // PER_WORD, PER_WORD)
    words = np.zeros((n, k // PER_WORD), dtype=np.uint32)
    for r in range(PER_WORD):
        words |= q[:, :, r] << np.uint32(BITS * r)
    return words, scale


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """MLC stores float32 tensors as bfloat16 ("f32-to-bf16"): the upper 16 bits, rounded to nearest
    even (the weights here are small and finite, so tvmjs's out-of-range truncation never applies)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def reorder_qkv(array: np.ndarray, num_heads: int) -> np.ndarray:
    """Hugging Face's fused rows [head, (q, k, v), head_dim] -> MLC's [(q, k, v), head, head_dim]."""
    head_dim = array.shape[0] // (3 * num_heads)
    return np.ascontiguousarray(
        array.reshape(num_heads, 3, head_dim, *array.shape[1:]).transpose(1, 0, 2, *range(3, array.ndim + 2))
    ).reshape(array.shape)


def _outputs(name: str, weight: np.ndarray, quantization: str, ffn_out_dtype: str) -> list[tuple[str, np.ndarray]]:
    """The MLC tensors made from one checkpoint tensor (names as in tensor-cache.json)."""
    module = name.removesuffix(".weight").removesuffix(".bias")
    is_matrix = weight.ndim == 2
    if quantization == "q0f16" or not is_matrix:
        dtype = ffn_out_dtype if (".mlp." in name and name.endswith(".bias")) else "float16"
        return [(name, weight.astype(dtype))]
    q_weight, q_scale = plain_quantize(weight)
    if "embed_in" in name:  # an embedding: gathered by rows, never transposed
        return [(f"{module}.q_weight", q_weight), (f"{module}.q_scale", q_scale)]
    return [(f"{module}.q_weight", np.ascontiguousarray(q_weight.T)), (f"{module}.q_scale", np.ascontiguousarray(q_scale.T))]


def convert_subset(
    model_dir: Path,
    names: list[str],
    quantization: str,
    out_file: Path,
    *,
    ffn_out_dtype: str = "float32",
) -> dict[str, Any]:
    """Convert the checkpoint tensors ``names`` one by one into ``out_file``; time it.

    Returns seconds, source bytes, and the sha256 of every output tensor's bytes (to compare with the
    fast converter's records).  A tied checkpoint's ``embed_out`` is the embedding quantized as a
    Linear; pass ``"embed_out.weight"`` to include that work (read from ``gpt_neox.embed_in.weight``).
    """
    if quantization not in ("q0f16", "q4f16_0"):
        raise ValueError(f"the baseline implements q0f16 and q4f16_0, not {quantization}")
    config = json.loads((model_dir / "config.json").read_text())
    index = model_dir / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"] if index.is_file() else None
    start = time.perf_counter()
    digests: dict[str, str] = {}
    check_seconds = 0.0  # the sha256 digests are for the bit check, not part of the work being timed
    source_bytes = 0
    handles: dict[str, Any] = {}
    md5 = hashlib.md5()  # MLC's format records an md5 of every shard: same hashing work as the converter
    with open(out_file, "wb") as out:
        for name in names:
            stored = "gpt_neox.embed_in.weight" if name == "embed_out.weight" and config.get("tie_word_embeddings") else name
            file = weight_map[stored] if weight_map else "model.safetensors"
            if file not in handles:
                handles[file] = safe_open(model_dir / file, framework="np")
            weight = handles[file].get_tensor(stored)
            source_bytes += weight.nbytes
            if name.endswith("attention.query_key_value.weight") or name.endswith("attention.query_key_value.bias"):
                weight = reorder_qkv(weight, config["num_attention_heads"])
            outputs = _outputs(name, weight, quantization, ffn_out_dtype)
            for out_name, array in outputs:
                data = (f32_to_bf16(array) if array.dtype == np.float32 else np.ascontiguousarray(array)).tobytes()
                md5.update(data)
                out.write(data)
                check_start = time.perf_counter()
                digests[out_name] = hashlib.sha256(data).hexdigest()
                check_seconds += time.perf_counter() - check_start
            del weight, outputs
    handles.clear()
    seconds = time.perf_counter() - start - check_seconds
    return {"seconds": seconds, "source_bytes": source_bytes, "digests": digests, "md5": md5.hexdigest()}
