"""Run the full-scale benchmarks and write benchmarks/RESULTS.md (issue 6).

    python benchmarks/run.py            # the 3.6B LINE-shaped checkpoint: ~40 min on 2 cores
    python benchmarks/run.py --quick    # every tensor at full size, 2 layers: a few minutes
    python benchmarks/run.py --scale tiny --sections convert,compile,host   # seconds (the test runs this)

Sections (``--sections``, comma-separated; default all): ``checkpoint`` (generate or verify the
synthetic checkpoint), ``convert`` (q4f16_0 and q0f16 against the plain numpy baseline, plus the
bit-for-bit check), ``compile`` (iphone, mac, host libraries), ``host`` (prefill/decode speed of the
host builds next to transformers), ``anchor`` (side by side with llama.cpp), ``workflow`` (no-op and
iPhone-context reruns of the demo workflow), ``line`` (``snakemake --cores 2 all`` from empty results with
the checkpoint as a local-source model: per-job wall and peak RSS, total, disk).  Each measurement runs in a fresh process (benchmarks/worker.py) so its peak RSS is its
own.  Everything large goes to benchmarks/work/ (git-ignored); ``--clean`` removes it afterwards,
keeping the checkpoint's digest file.  The full scale writes benchmarks/RESULTS.md; other scales
write benchmarks/work/RESULTS-<scale>.md unless ``--results`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `python benchmarks/run.py` from anywhere

from benchmarks import machine, report, synthetic, workflow_bench  # noqa: E402

SECTIONS = ("checkpoint", "convert", "compile", "host", "anchor", "workflow", "line")
#: The LINE-scale workflow run (issue 11): tokens of the default evaluation text it scores.  The workflow's
#: default is 10,000; at 3.6B that is ~15 min of float32 reference alone, so the run scores fewer and the
#: report extrapolates the per-token rates it measured to 10,000 (labelled as such).
LINE_MAX_TOKENS = 1000
#: The llama.cpp side by side (issue 11): threads of both engines, prompt and decode steps, and how many
#: speed runs each engine gets (fresh processes, the two engines alternating): on an idle machine one decode
#: run of either engine varied by ±15 % from the next, so a ratio of single runs could not tell 0.9 from 1.0.
ANCHOR = {"threads": 2, "prompt_len": 32, "decode_tokens": 16, "speed_runs": 3}
LLAMA_PYTHON = REPO / "benchmarks" / "work" / "llama-venv" / "bin" / "python"
QUANTIZATIONS = ("q4f16_0", "q0f16")
#: (target, quantization) of each library: the workflow's device builds and the host builds of both.
BUILDS = (("iphone", "q4f16_0"), ("mac", "q0f16"), ("host", "q4f16_0"), ("host", "q0f16"))

#: Per scale: how much to repeat, which tensors the slow baseline converts, the host-speed workload
#: (every engine gets the same prompt; transformers at least as many decode steps and runs as the
#: hf2mlc builds; ``--prompt-len``/``--decode-tokens``/``--host-repeats`` change the hf2mlc workload).
SETTINGS: dict[str, dict[str, Any]] = {
    "full": {"convert_repeats": 3, "baseline_layers": 2, "max_shard_bytes": synthetic.HUB_MAX_SHARD_BYTES,
             "prompt_len": 32, "decode_tokens": 8, "host_repeats": 3, "torch_decode_tokens": 16, "torch_repeats": 3,
             "results": REPO / "benchmarks" / "RESULTS.md"},
    "quick": {"convert_repeats": 2, "baseline_layers": 2, "max_shard_bytes": synthetic.HUB_MAX_SHARD_BYTES,
              "prompt_len": 16, "decode_tokens": 8, "host_repeats": 2, "torch_decode_tokens": 16, "torch_repeats": 3,
              "results": None},
    "tiny": {"convert_repeats": 2, "baseline_layers": 1, "max_shard_bytes": 400_000,
             "prompt_len": 16, "decode_tokens": 4, "host_repeats": 2, "torch_decode_tokens": 4, "torch_repeats": 2,
             "results": None},
}


class Bench:
    """Paths, settings and the results being collected for one benchmark run."""

    def __init__(self, scale: str, work: Path, *, ffn_out_dtype: str, timeout: float) -> None:
        self.scale = scale
        self.settings = SETTINGS[scale]
        self.shape = synthetic.SCALES[scale]
        self.work = work
        self.ffn_out_dtype = ffn_out_dtype
        self.timeout = timeout
        self.targets = ("iphone", "mac", "host")
        self.llama_python = LLAMA_PYTHON
        self.checkpoint = work / f"line-3.6b-synthetic-{scale}"
        self.out = work / scale  # weights, libraries and logs of this scale
        self.logs = self.out / "logs"
        self.results: dict[str, Any] = {"scale": scale, "shape": self.shape, "ffn_out_dtype": ffn_out_dtype,
                                        "settings": {k: v for k, v in self.settings.items() if k != "results"},
                                        "errors": {}}

    def weights_dir(self, quantization: str) -> Path:
        return self.out / "weights" / quantization

    def build_dir(self, target: str, quantization: str) -> Path:
        return self.out / "build" / f"{target}-{quantization}"

    def lib_name(self, target: str, quantization: str) -> str:
        return f"line-3_6b-synthetic-{quantization}-MLC-{target}"

    def worker(self, task: str, args: dict[str, Any], name: str, *, python: Path | None = None,
               module: str = "benchmarks.worker", env: dict[str, str] | None = None) -> dict[str, Any]:
        """Run one measurement in a fresh process; its output goes to logs/<name>.log.  ``python``
        and ``module`` pick another interpreter and worker (the llama.cpp anchor's own venv)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        out_json = self.logs / f"{name}.json"
        out_json.unlink(missing_ok=True)
        log = self.logs / f"{name}.log"
        before = machine.load()
        busy_before = machine.busy_cpu_seconds()
        start = time.perf_counter()
        with open(log, "w") as handle:
            proc = subprocess.run(
                [str(python or sys.executable), "-m", module, task, json.dumps(args), str(out_json)],
                cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, timeout=self.timeout,
                env={**os.environ, **(env or {})},
            )
        seconds = time.perf_counter() - start
        busy_after = machine.busy_cpu_seconds()
        if proc.returncode != 0 or not out_json.is_file():
            tail = log.read_text(errors="replace")[-2500:]
            raise RuntimeError(f"{task} ({name}) failed with exit code {proc.returncode}; {log}:\n{tail}")
        result = json.loads(out_json.read_text())
        result.update(process_seconds=round(seconds, 2), load_before=before, load_after=machine.load())
        if busy_before is not None and busy_after is not None:
            # cores kept busy by everything else (other jobs, the kernel) while this process ran
            result["other_cores"] = round(max(0.0, busy_after - busy_before - result["process_cpu_seconds"]) / seconds, 2)
        print(f"  {name}: {seconds:.1f} s, peak RSS {result.get('peak_rss_mb', 0):.0f} MiB", file=sys.stderr)
        return result


def _median(values: list[float]) -> float:
    return statistics.median(values)


def page_cache_fraction(directory: Path) -> float | None:
    """Share of the checkpoint's bytes in the page cache (util-linux ``fincore``; None without it)."""
    files = [str(p) for p in sorted(directory.glob("*.safetensors"))]
    if not files or shutil.which("fincore") is None:
        return None
    proc = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES,SIZE", *files],
                          capture_output=True, text=True, check=False)
    try:
        pairs = [tuple(int(x) for x in line.split()) for line in proc.stdout.splitlines() if line.strip()]
        return round(sum(r for r, _ in pairs) / sum(size for _, size in pairs), 3)
    except (ValueError, ZeroDivisionError):
        return None


def prepare_disk(checkpoint: Path, *, warm: bool) -> float | None:
    """Before a conversion: flush dirty pages (the previous run's output must not slow this one) and,
    for a warm run, read the checkpoint through so it sits in the page cache as after a download."""
    os.sync()
    if warm:
        buffer = bytearray(16 << 20)
        for path in sorted(checkpoint.glob("*.safetensors")):
            with open(path, "rb", buffering=0) as handle:
                while handle.readinto(buffer):
                    pass
    return page_cache_fraction(checkpoint)


def host_settings() -> dict[str, dict[str, int]]:
    """Context window and prefill chunk per target, from the workflow's config (what users build)."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))["defaults"]
    pick = lambda d: {"context_window_size": d["context_window_size"], "prefill_chunk_size": d["prefill_chunk_size"]}  # noqa: E731
    return {"iphone": pick(config["targets"]["iphone"]), "mac": pick(config["targets"]["mac"]), "host": pick(config["host"])}


# ----------------------------------------------------------------------------- sections


def section_checkpoint(bench: Bench) -> None:
    record = synthetic.ensure_checkpoint(bench.checkpoint, bench.shape, max_shard_bytes=bench.settings["max_shard_bytes"])
    plan = synthetic.tensor_plan(bench.shape)
    weights = [t for t in plan if t.dtype == "F16"]
    bench.results["checkpoint"] = {
        "action": record["action"],
        "seconds": record["seconds"] if record["action"] != "reused" else record["verify_seconds"],
        "files": len(record["files"]),
        "weight_files": sum(1 for n in record["files"] if n.endswith(".safetensors")),
        "bytes": sum(e["size"] for e in record["files"].values()),
        "weight_bytes": sum(t.nbytes for t in weights),
        "params": sum(t.nbytes // 2 for t in weights),
        "digest": synthetic.checkpoint_digest(record),
    }


def _baseline_names(bench: Bench) -> list[str]:
    """The embedding (as embedding and, tied, as embed_out) and the first layers, in full."""
    layers = bench.settings["baseline_layers"]
    names = ["gpt_neox.embed_in.weight"]
    for t in synthetic.tensor_plan(bench.shape, legacy_buffers=False):
        if any(t.name.startswith(f"gpt_neox.layers.{i}.") for i in range(layers)):
            names.append(t.name)
    return names + ["embed_out.weight"]


def _processed_bytes(bench: Bench) -> int:
    """Source bytes the converter reads and transforms: every weight, the tied embedding twice."""
    weights = sum(t.nbytes for t in synthetic.tensor_plan(bench.shape) if t.dtype == "F16")
    embed = bench.shape["vocab_size"] * bench.shape["hidden_size"] * 2
    return weights + embed


def section_convert(bench: Bench) -> None:
    if not bench.checkpoint.is_dir():
        raise RuntimeError("no checkpoint: run the checkpoint section first")
    out: dict[str, Any] = {}
    weight_bytes = sum(t.nbytes for t in synthetic.tensor_plan(bench.shape) if t.dtype == "F16")
    processed = _processed_bytes(bench)
    names = _baseline_names(bench)
    for quant in QUANTIZATIONS:
        args = {"model_dir": str(bench.checkpoint), "out_dir": str(bench.weights_dir(quant)), "quantization": quant,
                "ffn_out_dtype": bench.ffn_out_dtype}
        runs = []
        for i in range(bench.settings["convert_repeats"]):
            cached = prepare_disk(bench.checkpoint, warm=True)
            runs.append({**bench.worker("convert", args, f"convert-{quant}-{i}"), "page_cache": cached})
        prepare_disk(bench.checkpoint, warm=False)
        cold = bench.worker("convert", {**args, "cold": True}, f"convert-{quant}-cold")
        wall = _median([r["call_seconds"] for r in runs])
        base = bench.worker("baseline", {"model_dir": str(bench.checkpoint), "names": names, "quantization": quant,
                                         "out_file": str(bench.out / f"baseline-{quant}.bin"),
                                         "ffn_out_dtype": bench.ffn_out_dtype}, f"baseline-{quant}")
        base_full = base["seconds"] * processed / base["source_bytes"]
        cached = bench.worker("cached_digests", {"weights_dir": str(bench.weights_dir(quant)),
                                                 "names": sorted(base["digests"])}, f"digests-{quant}")["digests"]
        mismatched = sorted(n for n, d in base["digests"].items() if cached.get(n) != d)
        out[quant] = {
            "runs": [{k: r.get(k) for k in ("call_seconds", "process_seconds", "cpu_seconds", "peak_rss_mb", "load_before",
                                            "other_cores", "page_cache")} for r in runs],
            "cold": {k: cold.get(k) for k in ("call_seconds", "cpu_seconds", "peak_rss_mb", "load_before", "other_cores")},
            "seconds": round(wall, 2),
            "gb_per_s": weight_bytes / wall / 1e9,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "cpu_seconds": _median([r["cpu_seconds"] for r in runs]),
            "output_bytes": runs[-1]["output_bytes"],
            "bits_per_param": runs[-1]["bits_per_param"],
            "param_count": runs[-1]["param_count"],
            "shards": runs[-1]["shards"],
            "baseline": {
                "tensors": len(names),
                "subset_bytes": base["source_bytes"],
                "subset_seconds": base["seconds"],
                "subset_gb_per_s": base["source_bytes"] / base["seconds"] / 1e9,
                "full_seconds_estimate": base_full,
                "gb_per_s": weight_bytes / base_full / 1e9,
                "peak_rss_mb": base["peak_rss_mb"],
                "other_cores": base.get("other_cores"),
            },
            "speedup": base_full / wall,
            "bit_check": {"tensors": len(base["digests"]), "identical": len(base["digests"]) - len(mismatched),
                          "mismatched": mismatched[:20]},
        }
    bench.results["convert"] = {"weight_bytes": weight_bytes, "processed_bytes": processed,
                                "baseline_names": names, **out}


def section_compile_one(bench: Bench, target: str, quant: str) -> dict[str, Any]:
    """Compile one library of the checkpoint with the workflow's settings for its target."""
    settings = host_settings()
    return bench.worker("compile", {
        "model_dir": str(bench.checkpoint), "quantization": quant, "target": target,
        "out_dir": str(bench.build_dir(target, quant)), "lib_name": bench.lib_name(target, quant),
        "ffn_out_dtype": bench.ffn_out_dtype, **settings[target],
    }, f"compile-{target}-{quant}")


def section_compile(bench: Bench) -> None:
    settings = host_settings()
    out: dict[str, Any] = {}
    for target, quant in BUILDS:
        if target not in bench.targets:
            continue
        key = f"{target}-{quant}"
        try:
            result = section_compile_one(bench, target, quant)
        except Exception as err:  # one failed target must not hide the others' numbers
            out[key] = {"error": str(err)[-1500:]}
            bench.results["errors"][f"compile {key}"] = out[key]["error"]
            continue
        out[key] = {"target": target, "quantization": quant, **settings[target],
                    **{k: result.get(k) for k in ("seconds", "call_seconds", "process_seconds", "cpu_seconds", "peak_rss_mb",
                                                  "files", "kernels", "load_before", "other_cores")}}
    bench.results["compile"] = out


def section_host(bench: Bench) -> None:
    import numpy as np

    s = bench.settings
    common = {"vocab_size": bench.shape["vocab_size"], "prompt_len": s["prompt_len"],
              "decode_tokens": s["decode_tokens"], "repeats": s["host_repeats"]}
    torch_steps = {"decode_tokens": max(s["torch_decode_tokens"], s["decode_tokens"]),
                   "repeats": max(s["torch_repeats"], s["host_repeats"])}
    out: dict[str, Any] = {"prompt_len": s["prompt_len"], "decode_tokens": s["decode_tokens"], "repeats": s["host_repeats"],
                           "torch_decode_tokens": torch_steps["decode_tokens"], "torch_repeats": torch_steps["repeats"]}
    logits: dict[str, Any] = {}
    for quant in QUANTIZATIONS:
        lib = bench.build_dir("host", quant) / f"{bench.lib_name('host', quant)}.so"
        if not lib.is_file() or not (bench.weights_dir(quant) / "tensor-cache.json").is_file():
            out[quant] = {"error": f"needs {lib} and {bench.weights_dir(quant)}: run the convert and compile sections"}
            bench.results["errors"][f"host {quant}"] = out[quant]["error"]
            continue
        path = bench.logs / f"logits-{quant}.npy"
        try:
            out[quant] = bench.worker("host_tvm", {**common, "lib": str(lib), "weights_dir": str(bench.weights_dir(quant)),
                                                   "logits_out": str(path)}, f"host-{quant}")
            logits[quant] = np.load(path)
        except Exception as err:
            out[quant] = {"error": str(err)[-1500:]}
            bench.results["errors"][f"host {quant}"] = out[quant]["error"]
    path = bench.logs / "logits-transformers.npy"
    q4_path = bench.logs / "logits-transformers-q4f16_0-roundtrip.npy"
    out["transformers"] = bench.worker("host_torch", {**common, **torch_steps, "model_dir": str(bench.checkpoint),
                                                      "threads": machine.usable_cores(), "logits_out": str(path),
                                                      "q4_logits_out": str(q4_path)},
                                       "host-transformers")
    references = {"q0f16": np.load(path), "q4f16_0": np.load(q4_path)}
    ref_tokens = out["transformers"]["greedy_tokens"]
    for quant, values in logits.items():
        result = out[quant]
        reference = references[quant]
        result["vs_transformers"] = {
            "prefill": result["prefill_tokens_per_s"] / out["transformers"]["prefill_tokens_per_s"],
            "decode": result["decode_tokens_per_s"] / out["transformers"]["decode_tokens_per_s"],
            "logits_max_rel_error": float(np.abs(values - reference).max() / np.abs(reference).max()),
            "logits_max_rel_error_vs_float": float(np.abs(values - references["q0f16"]).max()
                                                   / np.abs(references["q0f16"]).max()),
            "top1_agrees": int(np.argmax(values)) == int(np.argmax(reference)),
            "greedy_tokens_agreeing": next((i for i, (a, b) in enumerate(zip(result["greedy_tokens"], ref_tokens))
                                            if a != b), min(len(ref_tokens), len(result["greedy_tokens"]))),
        }
    bench.results["host"] = out


def section_anchor(bench: Bench) -> None:
    """hf2mlc next to llama.cpp on the same checkpoint and threads, one run each: fp16 -> 4-bit
    conversion (hf2mlc q4f16_0 from safetensors; llama.cpp's Q4_0 quantizer from a float16 GGUF of
    the same tensors), prefill of the same prompt, greedy decode steps."""
    python = Path(bench.llama_python)
    if not python.is_file():
        raise RuntimeError(f"no {python}: make the anchor's venv (benchmarks/README.md, llama.cpp side by side)")
    threads = ANCHOR["threads"]
    env = {"TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    quant = "q4f16_0"
    weights = bench.out / "anchor" / quant
    prepare_disk(bench.checkpoint, warm=True)
    convert = bench.worker("convert", {"model_dir": str(bench.checkpoint), "out_dir": str(weights), "quantization": quant,
                                       "ffn_out_dtype": bench.ffn_out_dtype}, "anchor-convert", env=env)
    lib = bench.build_dir("host", quant) / f"{bench.lib_name('host', quant)}.so"
    if not lib.is_file():
        section_compile_one(bench, "host", quant)
    speed = {"vocab_size": bench.shape["vocab_size"], "prompt_len": ANCHOR["prompt_len"],
             "decode_tokens": ANCHOR["decode_tokens"], "repeats": 1}
    f16, q4_0 = bench.out / "anchor" / "model-f16.gguf", bench.out / "anchor" / "model-q4_0.gguf"
    gguf = bench.worker("gguf", {"model_dir": str(bench.checkpoint), "out": str(f16)}, "anchor-gguf",
                        python=python, module="benchmarks.anchor")
    os.sync()
    quantize = bench.worker("quantize", {"source": str(f16), "out": str(q4_0), "threads": threads}, "anchor-quantize",
                            python=python, module="benchmarks.anchor", env=env)
    hf_runs, llama_runs = [], []
    for i in range(ANCHOR["speed_runs"]):  # alternating, so that a slow spell of the machine hits both engines
        hf_runs.append(bench.worker("host_tvm", {**speed, "lib": str(lib), "weights_dir": str(weights),
                                                 "logits_out": str(bench.logs / "logits-anchor.npy")},
                                    f"anchor-hf2mlc-{i}", env=env))
        llama_runs.append(bench.worker("speed", {**speed, "model": str(q4_0), "threads": threads}, f"anchor-llama-{i}",
                                       python=python, module="benchmarks.anchor", env=env))
    keep = ("call_seconds", "cpu_seconds", "peak_rss_mb", "load_before", "other_cores", "output_bytes", "load_seconds")
    hf2mlc, llama = _speed_runs(hf_runs, keep), _speed_runs(llama_runs, keep)
    bench.results["anchor"] = {
        **ANCHOR, "quantization": quant,
        "hf2mlc": {"convert": {k: convert.get(k) for k in keep}, "speed": hf2mlc},
        "llama": {"gguf": {k: gguf.get(k) for k in ("seconds", "bytes")},
                  "quantize": {k: quantize.get(k) for k in keep}, "speed": llama,
                  "version": llama_runs[0].get("llama_cpp_python"), "system_info": llama_runs[0].get("system_info")},
        "ratios": {"convert_time": convert["call_seconds"] / quantize["call_seconds"],
                   "prefill": hf2mlc["prefill_tokens_per_s"] / llama["prefill_tokens_per_s"],
                   "decode": hf2mlc["decode_tokens_per_s"] / llama["decode_tokens_per_s"]},
    }
    for path in (f16, q4_0):
        path.unlink(missing_ok=True)


def _speed_runs(runs: list[dict[str, Any]], keep: tuple[str, ...]) -> dict[str, Any]:
    """One engine's speed runs as the report shows them: median tokens/s, every run's, the most other work
    seen in any run, and the rest of the median-decode run's figures."""
    middle = sorted(runs, key=lambda r: r["decode_tokens_per_s"])[len(runs) // 2]
    return {**{k: middle.get(k) for k in keep},
            "other_cores": max((r.get("other_cores") or 0) for r in runs),
            **{f"{phase}_tokens_per_s": _median([r[f"{phase}_tokens_per_s"] for r in runs]) for phase in ("prefill", "decode")},
            **{f"{phase}_runs": [r[f"{phase}_tokens_per_s"] for r in runs] for phase in ("prefill", "decode")}}


def section_workflow(bench: Bench) -> None:
    bench.results["workflow"] = workflow_bench.measure(REPO, bench.work / "workflow", logs=bench.logs)


def section_line(bench: Bench) -> None:
    """The whole workflow on the checkpoint as a user's local model, in its own scratch copy."""
    bench.results["line"] = workflow_bench.measure_line(REPO, bench.work / f"workflow-line-{bench.scale}", bench.checkpoint,
                                                        max_tokens=bench.settings["line_max_tokens"], logs=bench.logs,
                                                        timeout=bench.timeout)


RUNNERS = {"checkpoint": section_checkpoint, "convert": section_convert, "compile": section_compile,
           "host": section_host, "anchor": section_anchor, "workflow": section_workflow, "line": section_line}


def clean(bench: Bench) -> None:
    """Remove the large outputs (checkpoint, weights, libraries), keeping digests, logs and results."""
    for path in (bench.checkpoint, bench.out / "weights", bench.out / "build", bench.out / "anchor",
                 bench.work / f"workflow-line-{bench.scale}"):
        shutil.rmtree(path, ignore_errors=True)
    for path in bench.out.glob("baseline-*.bin"):
        path.unlink()


def provenance(results: dict[str, Any]) -> dict[str, Any]:
    """When, under which commit and with how much other load a run measured its sections."""
    m = results.get("machine") or {}
    return {"run": results.get("started"), "date": m.get("date"), "commit": m.get("commit"),
            "load_at_start": m.get("load_at_start"), "load_at_end": results.get("load_at_end"), "settings": results.get("settings")}


def _section_of_error(key: str) -> str:
    """The section an entry of ``errors`` belongs to ("compile iphone-q4f16_0" -> "compile")."""
    return key.split(" ", 1)[0]


def merge_results(previous: dict[str, Any] | None, current: dict[str, Any], ran: list[str]) -> dict[str, Any]:
    """The raw numbers a report is written from: this run's sections (``ran``) over those of the last
    run of the same scale, so that a partial run (``--sections anchor``) replaces what it measured and
    keeps the rest, each section with the run it came from (``measured``: date, commit, load, settings).

    A section that failed this time loses its old numbers (its error says why).  A previous run of
    another scale or MLP dtype is not merged with: its numbers describe another model.
    """
    stamp = provenance(current)
    keep = (previous is not None and previous.get("scale") == current["scale"]
            and previous.get("ffn_out_dtype") == current["ffn_out_dtype"])
    merged: dict[str, Any] = json.loads(json.dumps(previous, default=str)) if keep else {}
    if keep and "measured" not in merged:  # written before runs were merged: one run measured all of it
        merged["measured"] = {name: provenance(previous) for name in SECTIONS if name in previous}
    measured = merged.setdefault("measured", {})
    for name in ran:
        if name in current:
            merged[name] = current[name]
        else:
            merged.pop(name, None)
        measured[name] = stamp
    errors = {k: v for k, v in (merged.get("errors") or {}).items() if _section_of_error(k) not in ran}
    errors.update(current.get("errors") or {})
    merged["errors"] = errors
    merged["section_seconds"] = {**(merged.get("section_seconds") or {}), **(current.get("section_seconds") or {})}
    for key in ("scale", "shape", "ffn_out_dtype", "settings", "machine", "started", "total_seconds", "load_at_end"):
        merged[key] = current.get(key)
    merged["sections"] = [name for name in SECTIONS if name in measured]
    merged["last_run_sections"] = list(ran)
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=tuple(SETTINGS), default="full")
    parser.add_argument("--quick", action="store_true", help="same as --scale quick")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work", help="scratch directory (default benchmarks/work)")
    parser.add_argument("--results", type=Path, help="where to write the Markdown report")
    parser.add_argument("--ffn-out-dtype", default="float32", choices=("float32", "float16"),
                        help="MLP dtype of the converted model (the LINE family's default is MLC's float32)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per measurement process")
    parser.add_argument("--targets", default="iphone,mac,host", help="libraries to compile (comma-separated)")
    parser.add_argument("--convert-repeats", type=int, help="conversions per quantization (default per scale)")
    parser.add_argument("--prompt-len", type=int, help="host benchmark: prompt tokens (default per scale)")
    parser.add_argument("--decode-tokens", type=int, help="host benchmark: decode steps of the hf2mlc builds")
    parser.add_argument("--host-repeats", type=int, help="host benchmark: runs of the hf2mlc builds")
    parser.add_argument("--line-max-tokens", type=int, default=LINE_MAX_TOKENS,
                        help=f"line section: tokens of the evaluation text scored (default {LINE_MAX_TOKENS}; the workflow's is 10000)")
    parser.add_argument("--llama-python", type=Path, default=LLAMA_PYTHON,
                        help="the anchor's interpreter: a venv with benchmarks/requirements-anchor.txt")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: rewrite the report from the raw numbers of the last run of this scale")
    parser.add_argument("--clean", action="store_true", help="remove checkpoint, weights and libraries afterwards")
    args = parser.parse_args(argv)
    scale = "quick" if args.quick else args.scale
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results_path = args.results or SETTINGS[scale]["results"] or work / f"RESULTS-{scale}.md"
    raw = work / scale / f"results-{scale}.json"
    if args.render:  # e.g. after a change to report.py: the numbers stay those of the runs
        write_report(results_path, json.loads(raw.read_text()))
        print(f"wrote {results_path}", file=sys.stderr)
        return 0

    bench = Bench(scale, work, ffn_out_dtype=args.ffn_out_dtype, timeout=args.timeout)
    overrides = {key: value for key, value in (("convert_repeats", args.convert_repeats), ("prompt_len", args.prompt_len),
                                               ("decode_tokens", args.decode_tokens), ("host_repeats", args.host_repeats),
                                               ("line_max_tokens", args.line_max_tokens))
                 if value is not None}
    if any(value < 1 for value in overrides.values()):
        parser.error("repeats, prompt length and decode tokens must be at least 1")
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    if not targets or set(targets) - {"iphone", "mac", "host"}:
        parser.error(f"--targets takes iphone, mac and/or host, not {args.targets!r}")
    bench.targets = targets
    bench.llama_python = args.llama_python
    bench.settings = {**bench.settings, **overrides}
    bench.results["settings"].update(overrides)
    bench.results["machine"] = machine.describe(REPO, work)
    bench.results["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # tells runs apart (merge_results)
    start = time.perf_counter()
    if "checkpoint" not in sections and any(s in sections for s in ("convert", "compile", "host", "anchor", "line")):
        sections = ["checkpoint", *sections]  # the others need it; reused when present
    ran = [name for name in SECTIONS if name in sections]
    bench.results["sections"] = ran
    for name in ran:
        print(f"[{name}] load {machine.load()}", file=sys.stderr)
        section_start = time.perf_counter()
        try:
            RUNNERS[name](bench)
        except Exception as err:
            traceback.print_exc()
            bench.results["errors"][name] = f"{type(err).__name__}: {err}"[-3000:]
        bench.results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - section_start, 1)
    bench.results["total_seconds"] = round(time.perf_counter() - start, 1)
    bench.results["load_at_end"] = machine.load()
    if args.clean:
        clean(bench)
    previous = json.loads(raw.read_text()) if raw.is_file() else None
    merged = merge_results(previous, bench.results, ran)
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(merged, indent=1, default=str))
    write_report(results_path, merged)
    print(f"wrote {results_path} (raw numbers, this run's sections merged into the last run's: {raw})", file=sys.stderr)
    return 1 if bench.results["errors"] else 0


def write_report(path: Path, results: dict[str, Any]) -> None:
    """RESULTS.md from the merged raw numbers, keeping the hand-written notes of the file it replaces."""
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = path.read_text(encoding="utf-8") if path.is_file() else None
    path.write_text(report.render(results, previous=previous))


if __name__ == "__main__":
    sys.exit(main())
