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
from .manifest import atomic_output_dir
from .model.gpt_neox.config import GPTNeoXConfig
from .model.gpt_neox.loader import GPTNeoXCheckpoint, SourceReader, qkv_row_order, reorder_qkv
from .model.gpt_neox.params import ParamSpec, param_specs
from .quantization import (
    DEFAULT_CALIBRATION_TEXT,
    DEFAULT_CALIBRATION_TOKENS,
    Method,
    Quantization,
    get_method,
    get_quantization,
)
from .quantization.calibration import (
    LAYER_LINEARS,
    CalibrationStats,
    LinearPlan,
    collect_statistics,
    load_calibration_text,
    plan_layer,
    embedding_plan,
    quantize_planned,
)
from .quantization.group import quantize_embedding, quantize_linear, quantize_rows_fast
from .spec import FFN_OUT_DTYPES
from .tensor_cache import TensorCacheWriter


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


@dataclass
class _Calibrated:
    """What a calibrated job's quantizer needs besides the tensor, and where it records its error."""

    method: Method
    plan: LinearPlan | None
    errors: dict[str, float]


def _regroups_while_quantizing(job: _Job, fast: bool, calibrated: bool) -> bool:
    """Whether a fused-QKV weight is read as stored and regrouped by the fast quantizer block by block
    (``row_order``), which saves a copy of the whole weight; the other paths read it regrouped."""
    return job.reorder_qkv and fast and not calibrated and job.specs[0].transform == "q_weight"


def _compute(
    job: _Job, source: np.ndarray, q: Quantization, fast: bool, threads: int | None, calibrated: _Calibrated | None = None,
    row_order: np.ndarray | None = None,
) -> list[tuple[str, np.ndarray]]:
    first = job.specs[0]
    if first.transform == "cast":
        return [(first.name, source.astype(first.dtype, copy=False))]
    if calibrated is not None:
        q_weight, q_scale, error = quantize_planned(
            source, calibrated.plan, calibrated.method, q, embedding=first.kind == "embedding"
        )
        calibrated.errors[_module(job)] = round(error, 8)
        return [(job.specs[0].name, q_weight), (job.specs[1].name, q_scale)]
    if first.kind == "embedding":
        q_weight, q_scale = (
            quantize_rows_fast(source, q, threads=threads) if fast else quantize_embedding(source, q)
        )
    else:
        q_weight, q_scale = (
            quantize_rows_fast(source, q, transpose=q.linear_weight_layout == "KN", threads=threads, row_order=row_order)
            if fast
            else quantize_linear(source, q)
        )
    return [(job.specs[0].name, q_weight), (job.specs[1].name, q_scale)]


def _module(job: _Job) -> str:
    """The module a job's tensors belong to, by their MLC name (``embed_out``'s source may be embed_in's)."""
    return job.specs[0].name.rsplit(".", 1)[0]


def _plan_key(module: str) -> int | None:
    """Which :func:`plan_layer` call covers ``module``: a layer index, -1 for the head, None for embed_in."""
    if module.startswith("gpt_neox.layers."):
        return int(module.split(".")[2])
    if module in ("gpt_neox.final_layer_norm", "embed_out"):
        return -1
    return None


class _CalibratedLayers:
    """Serves each job's source after a layer's AWQ folding, with the statistics its quantizer weighs by.

    A whole layer is read and planned when its first tensor is asked for (its LayerNorms come before
    its linears in the parameter order, but their folded values depend on the linears); only the
    layer being served is kept.
    """

    def __init__(self, reader: SourceReader, config: GPTNeoXConfig, stats: CalibrationStats, method: Method, q: Quantization) -> None:
        self.reader, self.config, self.stats, self.method, self.q = reader, config, stats, method, q
        self._key: int | None = None
        self.errors: dict[str, float] = {}
        self._tensors: dict[str, np.ndarray] = {}
        self._plans: dict[str, LinearPlan] = {}

    def _names(self, key: int) -> list[str]:
        if key < 0:
            return ["gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias", "embed_out.weight"]
        p = f"gpt_neox.layers.{key}"
        names = [f"{p}.{norm}.{suffix}" for norm in ("input_layernorm", "post_attention_layernorm") for suffix in ("weight", "bias")]
        return names + [f"{p}.{linear}.{suffix}" for linear in LAYER_LINEARS for suffix in ("weight", "bias")]

    def load(self, job: _Job) -> tuple[np.ndarray, _Calibrated]:
        module = _module(job)
        key = _plan_key(module)
        if key is None:  # the input embedding (or a tensor that is not quantized)
            return self.reader.read(job.source, reorder=job.reorder_qkv), _Calibrated(
                self.method, embedding_plan(self.stats) if module == "gpt_neox.embed_in" else None, self.errors)
        if key != self._key:
            self._tensors, self._plans = {}, {}  # drop the previous layer first
            tensors = {name: self.reader.read(name).astype(np.float32) for name in self._names(key)}
            self._tensors, self._plans = plan_layer(tensors, key, self.stats, self.config, self.method, self.q)
            self.stats.release(key)
            self._key = key
        name = f"{module}.{job.specs[0].name.rsplit('.', 1)[1]}" if job.specs[0].transform == "cast" else f"{module}.weight"
        array = self._tensors[name]
        if job.reorder_qkv:
            array = reorder_qkv(array, self.config.num_attention_heads)
        return array, _Calibrated(self.method, self._plans.get(module), self.errors)


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
    method: str = "rtn",
    calibration_text: str | Path = DEFAULT_CALIBRATION_TEXT,
    calibration_tokens: int = DEFAULT_CALIBRATION_TOKENS,
    evaluation_text: str | None = None,
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
    ``peak_rss_mb`` (of the whole process), ``source_format``, ``method`` and, for calibrated methods,
    ``calibration`` (text, its sha256, tokens, windows, seconds of the forward pass) and
    ``reconstruction_error`` (per quantized module: the activation-weighted share of its weight lost,
    :func:`hf2mlc.quantization.calibration.quantize_planned`).

    ``method`` (:data:`hf2mlc.quantization.METHODS`) chooses the codes and scales; ``rtn`` is MLC's
    quantizer, byte for byte.  Calibrated methods first run the float32 model over up to
    ``calibration_tokens`` tokens of ``calibration_text`` (a bundled set's name or a file), which
    must share no document with ``evaluation_text`` when that is given.
    """
    start = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    q = get_quantization(quantization)
    chosen = get_method(method)
    if chosen.calibrated and not q.is_quantized:
        raise UserError(f"method {chosen.name!r} chooses quantization codes, but {q.name} is not quantized; use method rtn.")
    if ffn_out_dtype not in FFN_OUT_DTYPES:
        raise UserError(f"ffn_out_dtype {ffn_out_dtype!r} is not supported; use one of {', '.join(FFN_OUT_DTYPES)}.")
    if shard_cap_mb < 1:
        raise UserError(f"shard_cap_mb must be at least 1, got {shard_cap_mb}.")
    if out_dir.resolve() == model_dir.resolve():
        raise UserError(f"{out_dir}: the output directory must differ from the model directory.")
    config = GPTNeoXConfig.from_file(model_dir / "config.json")
    specs = param_specs(config, q, ffn_out_dtype=ffn_out_dtype)
    stats: CalibrationStats | None = None
    calibration: dict[str, Any] = {}
    if chosen.calibrated:
        text = load_calibration_text(model_dir, calibration_text, max_tokens=calibration_tokens, evaluation_text=evaluation_text)
        stats = collect_statistics(model_dir, text, hessians=chosen.gptq, progress=progress)
        calibration = {**text.record(), "seconds": round(stats.seconds, 3)}
    try:
        result = _convert(model_dir, out_dir, config, specs, q, chosen, stats, progress=progress, fast=fast, threads=threads,
                          shard_cap_mb=shard_cap_mb)
    finally:
        if stats is not None:
            stats.close()
    result["method"] = chosen.name
    if calibration:
        result["calibration"] = calibration
    result["seconds"] = round(time.perf_counter() - start, 3)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return result


def _convert(
    model_dir: Path,
    out_dir: Path,
    config: GPTNeoXConfig,
    specs: list[ParamSpec],
    q: Quantization,
    method: Method,
    stats: CalibrationStats | None,
    *,
    progress: bool,
    fast: bool,
    threads: int | None,
    shard_cap_mb: int,
) -> dict[str, Any]:
    with GPTNeoXCheckpoint(model_dir) as weights:
        reader = SourceReader(weights, config)
        jobs = _jobs(specs, reader)
        total_params = weights.total_elements()
        bar = tqdm(
            total=sum(job.nbytes for job in jobs), unit="B", unit_scale=True, unit_divisor=1024,
            desc=f"convert {q.name}", file=sys.stderr, disable=not progress,
        )
        layers = _CalibratedLayers(reader, config, stats, method, q) if stats is not None else None
        if layers is not None:
            load = layers.load
        else:
            def load(job: _Job) -> tuple[np.ndarray, None]:
                return reader.read(job.source, reorder=job.reorder_qkv and not _regroups_while_quantizing(job, fast, False)), None

        with atomic_output_dir(out_dir) as tmp:
            writer = TensorCacheWriter(tmp, shard_cap_mb=shard_cap_mb, encode_format="f32-to-bf16", background=fast)
            sources = _read_ahead(jobs, load) if fast else ((job, load(job)) for job in jobs)
            try:
                for job, (source, calibrated) in sources:
                    row_order = (qkv_row_order(source.shape[0], config.num_attention_heads)
                                 if _regroups_while_quantizing(job, fast, layers is not None) else None)
                    computed = _compute(job, source, q, fast, threads, calibrated, row_order)
                    for (name, array), spec in zip(computed, job.specs, strict=True):
                        if tuple(array.shape) != spec.shape or str(array.dtype) != spec.dtype:
                            raise AssertionError(f"{name}: made {array.shape} {array.dtype}, spec {spec.shape} {spec.dtype}")
                        writer.add(name, array)
                    del source, computed
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
        **({"reconstruction_error": layers.errors} if layers is not None else {}),
    }
