"""Hugging Face GPT-NeoX weights -> MLC LLM's ``params_shard_*.bin`` + ``tensor-cache.json``, streaming.

The output is byte-identical to what ``mlc_llm convert_weight`` writes through
``tvm.contrib.tvmjs.dump_tensor_cache(..., encode_format="f32-to-bf16")`` for the same tensors, in
:func:`hf2mlc.model.gpt_neox.params.param_specs` order, with the same metadata (``ParamSize``, ``ParamBytes``,
``BitsPerParam``) computed the way MLC's ``convert_weight.py`` computes it.

Memory stays bounded by a few tensors, never the model: each source tensor is read, cast or
quantized, written to its shard file and dropped.  The fast path (default) quantizes with
:func:`hf2mlc.quantization.group.quantize_rows_fast` on all cores, reads the next source tensor on a
helper thread while the current one is quantized, and hashes and writes shard files on another (with
at most two shard caps queued).  ``fast=False`` runs the plain reference quantizer sequentially; it
is several times slower and its float16 temporaries take ~8x the largest tensor.  Both produce the
same bytes (tests/test_convert.py checks it).
"""

from __future__ import annotations

import collections
import concurrent.futures
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .errors import UserError
from .loader.huggingface import HuggingFaceWeights, SourceReader
from .manifest import atomic_output_dir
from .model.gpt_neox.config import GPTNeoXConfig
from .model.gpt_neox.params import ParamSpec, param_specs
from .quantization import Quantization, get_quantization
from .quantization.group import quantize_embedding, quantize_linear, quantize_rows_fast
from .tensor_cache import TensorCacheWriter

FFN_OUT_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class _Job:
    """One source tensor and the parameters computed from it (a cast, or q_weight + q_scale)."""

    source: str
    reorder_qkv: bool
    specs: tuple[ParamSpec, ...]
    nbytes: int


def _jobs(specs: list[ParamSpec], reader: SourceReader) -> list[_Job]:
    jobs: list[_Job] = []
    for spec in specs:
        last = jobs[-1] if jobs else None
        if spec.transform == "q_scale" and last is not None and last.specs[-1].transform == "q_weight" \
                and last.source == spec.source:
            jobs[-1] = _Job(last.source, last.reorder_qkv, (*last.specs, spec), last.nbytes)
            continue
        # Checks presence and shape of every source before anything is written.
        jobs.append(_Job(spec.source, spec.reorder_qkv, (spec,), reader.info(spec.source).nbytes))
    return jobs


def _compute(job: _Job, source: np.ndarray, q: Quantization, fast: bool, threads: int | None) -> list[tuple[str, np.ndarray]]:
    first = job.specs[0]
    if first.transform == "cast":
        return [(first.name, source.astype(first.dtype, copy=False))]
    if first.kind == "embedding":
        q_weight, q_scale = (
            quantize_rows_fast(source, q, threads=threads) if fast else quantize_embedding(source, q)
        )
    else:
        q_weight, q_scale = (
            quantize_rows_fast(source, q, transpose=q.linear_weight_layout == "KN", threads=threads)
            if fast
            else quantize_linear(source, q)
        )
    return [(job.specs[0].name, q_weight), (job.specs[1].name, q_scale)]


def _read_ahead(jobs: Iterable[_Job], load: Callable[[_Job], np.ndarray]) -> Iterator[tuple[_Job, np.ndarray]]:
    """Yield (job, source) while the next job's source is being read on a helper thread."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as pool:
        pending: collections.deque = collections.deque()
        iterator = iter(jobs)
        first = next(iterator, None)
        if first is not None:
            pending.append((first, pool.submit(load, first)))
        while pending:
            job, future = pending.popleft()
            following = next(iterator, None)
            if following is not None:
                pending.append((following, pool.submit(load, following)))
            yield job, future.result()


def peak_rss_mb() -> float:
    """Peak resident set of this process so far, in MiB.

    On Linux this is ``VmHWM`` of /proc/self/status: ``ru_maxrss`` of a process started by
    fork + exec also counts the parent's resident set at the fork (a child of a 300 MB parent
    reports 300 MB), so it cannot measure a subprocess.  Elsewhere ``ru_maxrss`` (bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def convert_weights(
    model_dir: Path,
    out_dir: Path,
    quantization: str,
    *,
    ffn_out_dtype: str = "float32",
    shard_cap_mb: int = 32,
    progress: bool = True,
    fast: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Convert the checkpoint in ``model_dir`` into ``out_dir`` (replaced atomically); return stats.

    Stats: ``param_count`` (elements of the source weights, MLC's count), ``tensor_count``,
    ``param_bytes`` (of the converted tensors in their own dtypes), ``bits_per_param``,
    ``bytes_written`` (shard bytes on disk, float32 stored as bf16), ``shards``, ``seconds``,
    ``peak_rss_mb`` (of the whole process), ``source_format``.
    """
    start = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    q = get_quantization(quantization)
    if ffn_out_dtype not in FFN_OUT_DTYPES:
        raise UserError(f"ffn_out_dtype {ffn_out_dtype!r} is not supported; use one of {', '.join(FFN_OUT_DTYPES)}.")
    if shard_cap_mb < 1:
        raise UserError(f"shard_cap_mb must be at least 1, got {shard_cap_mb}.")
    if out_dir.resolve() == model_dir.resolve():
        raise UserError(f"{out_dir}: the output directory must differ from the model directory.")
    config = GPTNeoXConfig.from_file(model_dir / "config.json")
    specs = param_specs(config, q, ffn_out_dtype=ffn_out_dtype)

    with HuggingFaceWeights(model_dir) as weights:
        reader = SourceReader(weights, config)
        jobs = _jobs(specs, reader)
        total_params = weights.total_elements()
        bar = tqdm(
            total=sum(job.nbytes for job in jobs), unit="B", unit_scale=True, unit_divisor=1024,
            desc=f"convert {q.name}", file=sys.stderr, disable=not progress,
        )
        def load(job: _Job) -> np.ndarray:
            return reader.read(job.source, reorder=job.reorder_qkv)

        with atomic_output_dir(out_dir) as tmp:
            writer = TensorCacheWriter(tmp, shard_cap_mb=shard_cap_mb, encode_format="f32-to-bf16", background=fast)
            sources = _read_ahead(jobs, load) if fast else ((job, load(job)) for job in jobs)
            try:
                for job, source in sources:
                    for (name, array), spec in zip(_compute(job, source, q, fast, threads), job.specs, strict=True):
                        if tuple(array.shape) != spec.shape or str(array.dtype) != spec.dtype:
                            raise AssertionError(f"{name}: made {array.shape} {array.dtype}, spec {spec.shape} {spec.dtype}")
                        writer.add(name, array)
                    del source
                    bar.update(job.nbytes)
                param_bytes = float(writer.param_bytes)  # MLC sums into a float, so the JSON says "….0"
                metadata = {
                    "ParamSize": len(specs),
                    "ParamBytes": param_bytes,
                    "BitsPerParam": param_bytes * 8.0 / total_params,
                }
                shards = writer.finish(metadata)
            finally:
                writer.close()
                sources.close()  # on failure: stops the read-ahead thread before the directory goes
                bar.close()
    return {
        "quantization": q.name,
        "source_format": weights.format,
        "param_count": total_params,
        "tensor_count": len(specs),
        "param_bytes": int(param_bytes),
        "bits_per_param": metadata["BitsPerParam"],
        "bytes_written": writer.bytes_written,
        "shards": len(shards),
        "seconds": round(time.perf_counter() - start, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
