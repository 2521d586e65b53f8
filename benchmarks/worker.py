"""One measurement in a process of its own: ``python -m benchmarks.worker TASK ARGS_JSON OUT_JSON``.

Every figure that includes a peak RSS is taken in a fresh process, so that it counts only that step:
the peak is the process's own ``VmHWM`` (``ru_maxrss`` would also count what the parent had resident
when it forked).  Each task writes a JSON object to ``OUT_JSON``; run.py adds the process's total wall
time and the machine's load around it.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def peak_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def evict_from_page_cache(directory: Path) -> None:
    """Drop this checkpoint's pages from the page cache (only these files), for a cold-cache run."""
    for path in directory.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def rss_mb() -> dict[str, float]:
    """Resident memory now, split into anonymous (the process's own) and file-backed (mapped files,
    which the kernel can drop) pages."""
    out = {}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(("RssAnon:", "RssFile:")):
                out[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    return out


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- conversion


def task_convert(args: dict[str, Any]) -> dict[str, Any]:
    """The fast converter on the whole checkpoint (what the workflow's convert stage runs)."""
    import shutil

    from hf2mlc.convert import convert_weights

    # A workflow job starts without its output (Snakemake removes it), so the previous run's output is
    # deleted before the clock starts; the parent has flushed its dirty pages (os.sync) beforehand.
    shutil.rmtree(args["out_dir"], ignore_errors=True)
    if args.get("cold"):
        evict_from_page_cache(Path(args["model_dir"]))
    start = time.perf_counter()
    stats = convert_weights(
        Path(args["model_dir"]), Path(args["out_dir"]), args["quantization"],
        ffn_out_dtype=args["ffn_out_dtype"], progress=False, fast=args.get("fast", True),
    )
    seconds = time.perf_counter() - start
    return {**stats, "call_seconds": seconds, "output_bytes": dir_bytes(Path(args["out_dir"]))}


def task_baseline(args: dict[str, Any]) -> dict[str, Any]:
    """The plain per-tensor numpy baseline on a subset of the checkpoint's tensors."""
    from benchmarks.baseline import convert_subset

    result = convert_subset(
        Path(args["model_dir"]), args["names"], args["quantization"], Path(args["out_file"]),
        ffn_out_dtype=args["ffn_out_dtype"],
    )
    Path(args["out_file"]).unlink()
    return result


def task_cached_digests(args: dict[str, Any]) -> dict[str, Any]:
    """sha256 of the on-disk bytes of the named records of a tensor cache (read by offset, not whole)."""
    import hashlib

    directory = Path(args["weights_dir"])
    index = json.loads((directory / "tensor-cache.json").read_text())
    wanted = set(args["names"])
    digests: dict[str, str] = {}
    for shard in index["records"]:
        records = [r for r in shard["records"] if r["name"] in wanted]
        if not records:
            continue
        with open(directory / shard["dataPath"], "rb") as handle:
            for rec in records:
                handle.seek(rec["byteOffset"])
                digests[rec["name"]] = hashlib.sha256(handle.read(rec["nbytes"])).hexdigest()
    return {"digests": digests}


# ----------------------------------------------------------------------------- compile


def task_compile(args: dict[str, Any]) -> dict[str, Any]:
    from hf2mlc.compile import compile_model
    from hf2mlc.model.gpt_neox.config import GPTNeoXConfig
    from hf2mlc.spec import TargetSpec

    config = GPTNeoXConfig.from_file(Path(args["model_dir"]) / "config.json")
    spec = TargetSpec.create(
        target=args["target"], quantization=args["quantization"], lib_name=args["lib_name"],
        context_window_size=args["context_window_size"], prefill_chunk_size=args["prefill_chunk_size"],
        ffn_out_dtype=args["ffn_out_dtype"],
    )
    start = time.perf_counter()
    info = compile_model(config, spec, Path(args["out_dir"]))
    seconds = time.perf_counter() - start
    files = {name: (Path(args["out_dir"]) / name).stat().st_size for name in info["files"]}
    return {"call_seconds": seconds, "seconds": info["seconds"], "files": files, "kernels": info["kernels"]}


# ----------------------------------------------------------------------------- host speed


def prompt_ids(vocab_size: int, length: int, seed: int = 0) -> list[int]:
    """A fixed prompt of ordinary (non-special) token ids."""
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(7, vocab_size, size=length)]


def _speed_summary(prefill: list[float], decode: list[float], prompt_len: int) -> dict[str, Any]:
    return {
        "prefill_seconds": prefill,
        "decode_seconds": decode,
        "prefill_tokens_per_s": prompt_len / statistics.median(prefill),
        "decode_tokens_per_s": 1.0 / statistics.median(decode),
    }


def task_host_tvm(args: dict[str, Any]) -> dict[str, Any]:
    """Prefill and greedy decode on a host library through hf2mlc's engine (MLC's runtime calls)."""
    from hf2mlc.runtime import Engine

    start = time.perf_counter()
    engine = Engine(Path(args["lib"]), Path(args["weights_dir"]))
    load_seconds = time.perf_counter() - start
    ids = prompt_ids(args["vocab_size"], args["prompt_len"])
    prefill, decode, tokens, first_logits = [], [], [], None
    for rep in range(args["repeats"]):
        engine.reset()
        t = time.perf_counter()
        logits = engine.prefill(ids)
        prefill.append(time.perf_counter() - t)
        if rep == 0:
            first_logits = np.asarray(logits, dtype=np.float32)
        run_tokens = []
        for _ in range(args["decode_tokens"]):
            token = int(np.argmax(logits))
            run_tokens.append(token)
            t = time.perf_counter()
            logits = engine.decode(token)
            decode.append(time.perf_counter() - t)
        tokens.append(run_tokens)
    np.save(args["logits_out"], first_logits)
    return {"load_seconds": load_seconds, "greedy_tokens": tokens[0], "tokens_stable": all(t == tokens[0] for t in tokens),
            **_speed_summary(prefill, decode, len(ids))}


def task_host_torch(args: dict[str, Any]) -> dict[str, Any]:
    """The same prompt and greedy decode with transformers (torch float32 on the CPU)."""
    import torch
    import transformers

    torch.set_num_threads(args["threads"])
    start = time.perf_counter()
    model = transformers.GPTNeoXForCausalLM.from_pretrained(args["model_dir"], dtype=torch.float32)
    model.eval()
    load_seconds = time.perf_counter() - start
    rss_after_load = rss_mb()
    ids = prompt_ids(args["vocab_size"], args["prompt_len"])
    prefill, decode, tokens, first_logits = [], [], [], None
    with torch.inference_mode():
        for rep in range(args["repeats"]):
            t = time.perf_counter()
            out = model(torch.tensor([ids]), use_cache=True)
            prefill.append(time.perf_counter() - t)
            logits = out.logits[0, -1]
            if rep == 0:
                first_logits = logits.float().numpy().copy()
            past = out.past_key_values
            run_tokens = []
            for _ in range(args["decode_tokens"]):
                token = int(torch.argmax(logits))
                run_tokens.append(token)
                t = time.perf_counter()
                out = model(torch.tensor([[token]]), past_key_values=past, use_cache=True)
                decode.append(time.perf_counter() - t)
                past, logits = out.past_key_values, out.logits[0, -1]
            tokens.append(run_tokens)
            del out, past
    np.save(args["logits_out"], first_logits)
    if args.get("q4_logits_out"):
        _q4_reference(model, ids, Path(args["q4_logits_out"]))
    return {"load_seconds": load_seconds, "greedy_tokens": tokens[0], "tokens_stable": all(t == tokens[0] for t in tokens),
            "torch_threads": torch.get_num_threads(), "rss_after_load_mb": rss_after_load,
            **_speed_summary(prefill, decode, len(ids))}


def _q4_reference(model, ids: list[int], out: Path) -> None:
    """The reference for a q4f16_0 build: the same model with every matrix replaced by its q4f16_0
    round trip (quantize, dequantize), so the comparison shows the engine's error, not 4-bit's.

    Groups run along each matrix's input dimension, as in the converter; the tied embedding is one
    parameter here, and MLC's embedding and ``embed_out`` dequantize to the same values (both are
    grouped along the hidden dimension), so one round trip serves both.
    """
    import torch

    from hf2mlc.quantization import get_quantization
    from hf2mlc.quantization.group import dequantize, quantize_rows_fast

    q = get_quantization("q4f16_0")
    rows = 2048  # a block at a time: the float32 model already fills most of the machine's memory
    with torch.inference_mode():
        for param in model.parameters():
            if param.ndim == 2:
                for start in range(0, param.shape[0], rows):
                    block = param[start : start + rows]
                    source = block.numpy().astype(np.float16)  # exact: the float32 values came from float16
                    words, scale = quantize_rows_fast(source, q)
                    block.copy_(torch.from_numpy(dequantize(words, scale, q, size=source.shape[1])))
        logits = model(torch.tensor([ids])).logits[0, -1]
    np.save(out, logits.float().numpy())


TASKS = {
    "convert": task_convert,
    "baseline": task_baseline,
    "cached_digests": task_cached_digests,
    "compile": task_compile,
    "host_tvm": task_host_tvm,
    "host_torch": task_host_torch,
}


def main(argv: list[str], tasks: dict[str, Any] | None = None) -> int:
    """Run one task of ``tasks`` (this module's by default; benchmarks/anchor.py passes its own)."""
    task, args_json, out_json = argv
    cpu_start = os.times()
    result = (tasks or TASKS)[task](json.loads(args_json))
    cpu_end = os.times()
    result["cpu_seconds"] = round((cpu_end.user - cpu_start.user) + (cpu_end.system - cpu_start.system), 2)
    # everything this process and its children used, start-up included (run.py subtracts it from the
    # machine's busy time to see what other work ran meanwhile)
    result["process_cpu_seconds"] = round(cpu_end.user + cpu_end.system + cpu_end.children_user + cpu_end.children_system, 2)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    Path(out_json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
