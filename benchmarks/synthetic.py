"""A synthetic stand-in for LINE's japanese-large-lm-3.6b: the same shapes, random values, written streaming.

Nobody can download the real 7.2 GB model here, but every cost the benchmarks measure (reading,
quantizing, writing, compiling, running) depends on the shapes and dtypes, not on what the weights
learned.  So this module writes a checkpoint that looks to every reader exactly like the Hub's:

* ``config.json`` with LINE's fields and spelling (``rotary_pct``/``rotary_emb_base``, tied embeddings,
  sequential residual, float16);
* sharded safetensors (``model-0000i-of-0000n.safetensors``) plus ``model.safetensors.index.json``, cut
  greedily in state-dict order at ``max_shard_bytes`` (huggingface_hub's 5 GB default) and, inside each
  file, laid out the way the safetensors library lays out data (dtype descending, then name), with
  the ``{"format": "pt"}`` metadata transformers writes;
* LINE's legacy per-layer buffers (the causal ``attention.bias`` mask, ``attention.masked_bias`` and
  ``rotary_emb.inv_freq``) that its pickles carry and that a converter must skip; no ``embed_out.weight``
  (tied).

Values are deterministic: each tensor has its own PCG64 stream seeded from its name, so the bytes do
not depend on generation order or chunking, and a regenerated checkpoint has the same digest.  Matrices
and biases are float16 bit patterns with a random sign, a random 10-bit mantissa and an exponent
between 2**-8 and 2**-5 (magnitudes 0.004 to 0.0625, RMS 0.027, like a trained model's ~0.02), built
with integer operations on the raw generator output because numpy's normal sampler and float16 cast
would make generation, not the benchmark, the slow part; layer-norm weights lie in [0.5, 2).

Nothing is ever held whole: each tensor is generated in 2 MiB chunks that are hashed and written as
they are made.  The digest of every file is stored beside the checkpoint (``<name>.digest.json``),
which is how a later run knows it can reuse the checkpoint instead of spending a minute regenerating
it, and how it proves that regeneration reproduces the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hf2mlc.manifest import atomic_output_dir

#: Bump when the bytes this module writes change, so stored digests from older versions are not trusted.
GENERATOR_VERSION = 1
#: huggingface_hub's default ``max_shard_size`` ("5GB", decimal).
HUB_MAX_SHARD_BYTES = 5 * 10**9
_CHUNK_ELEMS = 1 << 20

#: LINE's japanese-large-lm-3.6b shape (its config.json on the Hub) and smaller variants of it.
SCALES: dict[str, dict[str, int]] = {
    # The real thing: 3.6B parameters, 7.2 GB of float16.
    "full": {"hidden_size": 3072, "num_attention_heads": 32, "num_hidden_layers": 30, "intermediate_size": 12288,
             "vocab_size": 51200, "max_position_embeddings": 2048},
    # Every tensor at full size, but 2 layers (0.7 GB): for developing the benchmarks.
    "quick": {"hidden_size": 3072, "num_attention_heads": 32, "num_hidden_layers": 2, "intermediate_size": 12288,
              "vocab_size": 51200, "max_position_embeddings": 2048},
    # Seconds end to end: what tests/test_benchmarks.py runs.
    "tiny": {"hidden_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 512,
             "vocab_size": 1024, "max_position_embeddings": 128},
}

_ST_DTYPES = {"F16": np.float16, "F32": np.float32, "BOOL": np.bool_}
#: Order of the safetensors ``Dtype`` enum, by which the library sorts data (descending) in a file.
_ST_DTYPE_RANK = {"BOOL": 0, "F16": 11, "F32": 15}


@dataclass(frozen=True)
class TensorPlan:
    """One tensor of the checkpoint: name, safetensors dtype, shape and how its values are made."""

    name: str
    dtype: str  # "F16" | "F32" | "BOOL"
    shape: tuple[int, ...]
    fill: str  # "weight" | "norm" | "causal_mask" | "masked_bias" | "inv_freq"

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(_ST_DTYPES[self.dtype]).itemsize


def line_config(shape: dict[str, int]) -> dict[str, Any]:
    """config.json as LINE's repository spells it, for the given sizes."""
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "bos_token_id": 2,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_size": shape["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": shape["intermediate_size"],
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": shape["max_position_embeddings"],
        "model_type": "gpt_neox",
        "num_attention_heads": shape["num_attention_heads"],
        "num_hidden_layers": shape["num_hidden_layers"],
        "rotary_emb_base": 10000,
        "rotary_pct": 1.0,
        "tie_word_embeddings": True,
        "torch_dtype": "float16",
        "use_cache": True,
        "use_parallel_residual": False,
        "vocab_size": shape["vocab_size"],
    }


def tensor_plan(shape: dict[str, int], *, legacy_buffers: bool = True) -> list[TensorPlan]:
    """The checkpoint's tensors in GPTNeoXForCausalLM's state-dict order (tied: no embed_out)."""
    h, i, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    head_dim = h // shape["num_attention_heads"]
    positions = shape["max_position_embeddings"]
    plan = [TensorPlan("gpt_neox.embed_in.weight", "F16", (v, h), "weight")]
    for n in range(shape["num_hidden_layers"]):
        p = f"gpt_neox.layers.{n}"
        plan += [
            TensorPlan(f"{p}.input_layernorm.weight", "F16", (h,), "norm"),
            TensorPlan(f"{p}.input_layernorm.bias", "F16", (h,), "weight"),
            TensorPlan(f"{p}.post_attention_layernorm.weight", "F16", (h,), "norm"),
            TensorPlan(f"{p}.post_attention_layernorm.bias", "F16", (h,), "weight"),
        ]
        if legacy_buffers:
            plan += [
                TensorPlan(f"{p}.attention.bias", "BOOL", (1, 1, positions, positions), "causal_mask"),
                TensorPlan(f"{p}.attention.masked_bias", "F32", (), "masked_bias"),
                TensorPlan(f"{p}.attention.rotary_emb.inv_freq", "F32", (head_dim // 2,), "inv_freq"),
            ]
        for module, out_f, in_f in (
            ("attention.query_key_value", 3 * h, h),
            ("attention.dense", h, h),
            ("mlp.dense_h_to_4h", i, h),
            ("mlp.dense_4h_to_h", h, i),
        ):
            plan += [
                TensorPlan(f"{p}.{module}.weight", "F16", (out_f, in_f), "weight"),
                TensorPlan(f"{p}.{module}.bias", "F16", (out_f,), "weight"),
            ]
    plan += [
        TensorPlan("gpt_neox.final_layer_norm.weight", "F16", (h,), "norm"),
        TensorPlan("gpt_neox.final_layer_norm.bias", "F16", (h,), "weight"),
    ]
    return plan


def _seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")


def _f16_chunks(tensor: TensorPlan, seed: int) -> Iterator[np.ndarray]:
    """The tensor's float16 bit patterns (uint16), chunk by chunk, from its own PCG64 stream."""
    bits = np.random.PCG64(_seed(seed, tensor.name))
    total = math.prod(tensor.shape)
    for start in range(0, total, _CHUNK_ELEMS):
        n = min(_CHUNK_ELEMS, total - start)
        u = bits.random_raw(-(-n // 4)).view(np.uint16)[:n]
        if tensor.fill == "norm":
            # positive, exponent 14 or 15 (bit 10 random), random mantissa: [0.5, 2)
            u &= np.uint16(0x07FF)
            u |= np.uint16(0x3800)
        else:
            # sign and mantissa random, exponent 7..10: |w| in [2**-8, 2**-4)
            exponent = u >> np.uint16(10)
            exponent &= np.uint16(3)
            exponent += np.uint16(7)
            exponent <<= np.uint16(10)
            u &= np.uint16(0x83FF)
            u |= exponent
        yield u


def tensor_chunks(tensor: TensorPlan, seed: int, *, rotary_base: float = 10000.0) -> Iterator[np.ndarray]:
    """The tensor's bytes as arrays (row-major), in bounded chunks."""
    if tensor.dtype == "F16":
        yield from _f16_chunks(tensor, seed)
    elif tensor.fill == "causal_mask":
        positions = tensor.shape[-1]
        rows = max(1, _CHUNK_ELEMS // positions)
        cols = np.arange(positions)
        for start in range(0, positions, rows):
            r = np.arange(start, min(positions, start + rows))[:, None]
            yield cols[None, :] <= r
    elif tensor.fill == "masked_bias":
        yield np.array(-1e9, dtype=np.float32)
    elif tensor.fill == "inv_freq":
        dim = 2 * tensor.shape[0]
        yield (1.0 / rotary_base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)).astype(np.float32)
    else:
        raise ValueError(f"{tensor.name}: no generator for {tensor.dtype}/{tensor.fill}")


def tensor_values(tensor: TensorPlan, seed: int) -> np.ndarray:
    """The whole tensor as its numpy dtype (for tests and small tensors only)."""
    parts = [np.ascontiguousarray(c).reshape(-1).view(np.uint8) for c in tensor_chunks(tensor, seed)]
    return np.concatenate(parts).view(_ST_DTYPES[tensor.dtype]).reshape(tensor.shape)


def shard_plan(plan: list[TensorPlan], max_shard_bytes: int) -> list[list[TensorPlan]]:
    """Greedy cut in state-dict order, as huggingface_hub's splitter does: a new file when the next
    tensor would overflow the current one; a tensor larger than the cap gets a file of its own."""
    shards: list[list[TensorPlan]] = [[]]
    size = 0
    for tensor in plan:
        if shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards


def _safetensors_header(tensors: list[TensorPlan]) -> tuple[bytes, list[TensorPlan]]:
    """Header bytes (length prefix included, padded to 8) and the tensors in their on-disk order."""
    ordered = sorted(tensors, key=lambda t: (-_ST_DTYPE_RANK[t.dtype], t.name))
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in ordered:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return len(text).to_bytes(8, "little") + text, ordered


def _file_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def expected_files(shape: dict[str, int], *, max_shard_bytes: int = HUB_MAX_SHARD_BYTES, legacy_buffers: bool = True) -> list[str]:
    count = len(shard_plan(tensor_plan(shape, legacy_buffers=legacy_buffers), max_shard_bytes))
    names = ["config.json", *_file_names(count)]
    return names + (["model.safetensors.index.json"] if count > 1 else [])


def write_checkpoint(
    out_dir: Path,
    shape: dict[str, int],
    *,
    seed: int = 0,
    max_shard_bytes: int = HUB_MAX_SHARD_BYTES,
    legacy_buffers: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the checkpoint into ``out_dir`` (replaced atomically); return its digest record."""
    start = time.perf_counter()
    plan = tensor_plan(shape, legacy_buffers=legacy_buffers)
    shards = shard_plan(plan, max_shard_bytes)
    names = _file_names(len(shards))
    files: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=sum(t.nbytes for t in plan), unit="B", unit_scale=True, unit_divisor=1024,
               desc="synthetic checkpoint", file=sys.stderr, disable=not progress)
    with atomic_output_dir(out_dir) as tmp:
        for name, tensors in zip(names, shards, strict=True):
            header, ordered = _safetensors_header(tensors)
            digest = hashlib.sha256(header)
            with open(tmp / name, "wb") as handle:
                handle.write(header)
                for tensor in ordered:
                    for chunk in tensor_chunks(tensor, seed):
                        data = memoryview(np.ascontiguousarray(chunk).reshape(-1).view(np.uint8))
                        digest.update(data)
                        handle.write(data)
                    bar.update(tensor.nbytes)
            files[name] = {"sha256": digest.hexdigest(), "size": (tmp / name).stat().st_size}
        text_files = {"config.json": json.dumps(line_config(shape), indent=2, sort_keys=True) + "\n"}
        if len(shards) > 1:
            index = {
                "metadata": {"total_size": sum(t.nbytes for t in plan)},
                "weight_map": {t.name: name for name, tensors in zip(names, shards) for t in tensors},
            }
            text_files["model.safetensors.index.json"] = json.dumps(index, indent=2, sort_keys=True) + "\n"
        for name, text in text_files.items():
            data = text.encode()
            (tmp / name).write_bytes(data)
            files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    bar.close()
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "shape": dict(shape),
        "max_shard_bytes": max_shard_bytes,
        "legacy_buffers": legacy_buffers,
        "files": dict(sorted(files.items())),
        "seconds": round(time.perf_counter() - start, 2),
    }


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_digest(record: dict[str, Any]) -> str:
    """One hex digest for the whole checkpoint (of the per-file digests), as quoted in RESULTS.md."""
    lines = "".join(f"{name} {entry['sha256']} {entry['size']}\n" for name, entry in sorted(record["files"].items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def _same_recipe(record: dict[str, Any], shape: dict[str, int], seed: int, max_shard_bytes: int, legacy: bool) -> bool:
    return (
        record.get("generator_version") == GENERATOR_VERSION
        and record.get("shape") == dict(shape)
        and record.get("seed") == seed
        and record.get("max_shard_bytes") == max_shard_bytes
        and record.get("legacy_buffers") == legacy
    )


def ensure_checkpoint(
    out_dir: Path,
    shape: dict[str, int],
    *,
    seed: int = 0,
    max_shard_bytes: int = HUB_MAX_SHARD_BYTES,
    legacy_buffers: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """The checkpoint in ``out_dir``, reused when its files match the stored digest, else (re)made.

    The digest file ``<out_dir>.digest.json`` outlives the checkpoint (the benchmarks delete the
    7 GB but keep it): a checkpoint regenerated later must reproduce it byte for byte, or this raises.
    Returns the digest record plus ``action`` ("reused" | "generated" | "regenerated") and
    ``verify_seconds``.
    """
    out_dir = Path(out_dir)
    digest_path = out_dir.with_name(out_dir.name + ".digest.json")
    stored = json.loads(digest_path.read_text()) if digest_path.is_file() else None
    if stored is not None and not _same_recipe(stored, shape, seed, max_shard_bytes, legacy_buffers):
        stored = None  # another shape or generator version: the old digest says nothing about this one
    if stored is not None and out_dir.is_dir():
        start = time.perf_counter()
        present = sorted(p.name for p in out_dir.iterdir() if p.is_file())
        matches = present == sorted(stored["files"]) and all(
            (out_dir / name).stat().st_size == entry["size"] and _hash_file(out_dir / name) == entry["sha256"]
            for name, entry in stored["files"].items()
        )
        if matches:
            return {**stored, "action": "reused", "verify_seconds": round(time.perf_counter() - start, 2)}
    record = write_checkpoint(out_dir, shape, seed=seed, max_shard_bytes=max_shard_bytes,
                              legacy_buffers=legacy_buffers, progress=progress)
    if stored is not None and stored["files"] != record["files"]:
        raise RuntimeError(
            f"{out_dir}: the regenerated checkpoint differs from {digest_path}; the generator is not "
            "deterministic (or its output changed without a GENERATOR_VERSION bump)."
        )
    action = "regenerated" if stored is not None else "generated"
    tmp = digest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, digest_path)
    return {**record, "action": action, "verify_seconds": 0.0}
