"""RESULTS.md from the numbers run.py collected: machine, goals, then one table per section."""

from __future__ import annotations

from typing import Any

GIB = 2**30

#: Issue 6's goals: (key, text, target).
GOALS = (
    ("q4_time", "3.6B fp16 → q4f16_0 wall time", "≤ 60 s"),
    ("q4_speedup", "q4f16_0 conversion vs plain numpy baseline", "≥ 4×"),
    ("q4_rss", "q4f16_0 conversion peak RSS", "≤ 2 GiB"),
    ("q0_time", "3.6B fp16 → q0f16 wall time", "≤ 30 s"),
    ("q0_rss", "q0f16 conversion peak RSS", "≤ 2 GiB"),
    ("iphone_compile", "Compile of the 30-layer iPhone library", "≤ 120 s"),
    ("noop", "No-op rerun of the workflow (`snakemake --cores 2 all`)", "≤ 3 s"),
    ("decode", "Host decode of the q4f16_0 build vs transformers float32", "faster"),
)


def _s(seconds: float) -> str:
    """Seconds with a precision that suits their size (the tiny scale measures milliseconds)."""
    return f"{seconds:.1f} s" if seconds >= 10 else f"{seconds:.2f} s" if seconds >= 0.1 else f"{seconds * 1000:.0f} ms"


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB"


def _mib(mb: float) -> str:
    return f"{mb:,.0f} MiB ({mb / 1024:.2f} GiB)"


def _others(run: dict[str, Any] | None) -> str:
    """How busy the rest of the machine was during one measurement (cores used by other processes)."""
    if not run:
        return "–"
    if run.get("other_cores") is not None:
        return f"{run['other_cores']:.2f}"
    return f"load {run['load_before']['load_1m']:.1f}" if run.get("load_before") else "–"


def when(results: dict[str, Any], section: str) -> dict[str, Any]:
    """The run that measured ``section`` (date, commit, load at start/end): a merged report holds
    sections of several runs (run.py's ``merge_results``); older raw files have one run for all."""
    stamp = (results.get("measured") or {}).get(section)
    if stamp:
        return stamp
    m = results.get("machine") or {}
    return {"date": m.get("date"), "commit": m.get("commit"), "load_at_start": m.get("load_at_start"),
            "load_at_end": results.get("load_at_end")}


def _run_of(stamp: dict[str, Any]) -> tuple[Any, Any]:
    """What tells two runs apart: their start to the second (older raw files: the minute) and commit."""
    return stamp.get("run") or stamp.get("date"), stamp.get("commit")


def _load_text(load: dict[str, Any] | None) -> str:
    load = load or {}
    return f"{load.get('load_1m', '–')} / {load.get('load_5m', '–')} / {load.get('load_15m', '–')}"


def mixed_runs(results: dict[str, Any]) -> bool:
    """Whether the report's sections come from more than one run."""
    return len({_run_of(when(results, name)) for name in results.get("sections", [])}) > 1


def goals(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(goal, target, measured, met) for every goal the run has numbers for."""
    conv, comp, wf, host = (results.get(k) or {} for k in ("convert", "compile", "workflow", "host"))
    measured: dict[str, tuple[str, bool | None]] = {}
    q4, q0 = conv.get("q4f16_0"), conv.get("q0f16")
    if q4:
        measured["q4_time"] = (_s(q4["seconds"]), q4["seconds"] <= 60)
        measured["q4_speedup"] = (f"{q4['speedup']:.1f}×", q4["speedup"] >= 4)
        measured["q4_rss"] = (_mib(q4["peak_rss_mb"]), q4["peak_rss_mb"] <= 2048)
    if q0:
        measured["q0_time"] = (_s(q0["seconds"]), q0["seconds"] <= 30)
        measured["q0_rss"] = (_mib(q0["peak_rss_mb"]), q0["peak_rss_mb"] <= 2048)
    iphone = comp.get("iphone-q4f16_0")
    if iphone:
        measured["iphone_compile"] = ("failed", False) if "error" in iphone else (_s(iphone["seconds"]), iphone["seconds"] <= 120)
    if wf:
        noop = wf["real_noop"]["median_seconds"]
        measured["noop"] = (f"{noop:.2f} s (dry run {wf['dry_run_noop']['median_seconds']:.2f} s)", noop <= 3)
    tvm_q4, torch_ref = host.get("q4f16_0"), host.get("transformers")
    if tvm_q4 and torch_ref and "decode_tokens_per_s" in tvm_q4:
        ratio = tvm_q4["decode_tokens_per_s"] / torch_ref["decode_tokens_per_s"]
        measured["decode"] = (f"{tvm_q4['decode_tokens_per_s']:.2f} vs {torch_ref['decode_tokens_per_s']:.2f} tok/s ({ratio:.2f}×)",
                              ratio > 1)
    rows = []
    full = results["scale"] == "full"
    for key, text, target in GOALS:
        if key in measured:
            value, met = measured[key]
            status = ("met" if met else "**not met**") if full else f"n/a at {results['scale']} scale"
            rows.append((text, target, value, status))
        else:
            rows.append((text, target, "not measured", "–"))
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _machine(results: dict[str, Any]) -> str:
    m = results["machine"]
    start, end = m["load_at_start"], results.get("load_at_end") or {}
    rows = [
        ["CPU", f"{m['cpu_model']} ({m.get('cpu_features', '?')})"],
        ["cores (usable)", m["cores"]],
        ["memory", f"{m['memory_gib']} GiB ({start['mem_available_gib']} GiB available at start)"],
        ["OS", m["os"]],
        ["date", m["date"]],
        ["load average at start (1/5/15 min)", f"{start['load_1m']} / {start['load_5m']} / {start['load_15m']}"],
        ["load average at end (1/5/15 min)", f"{end.get('load_1m', '–')} / {end.get('load_5m', '–')} / {end.get('load_15m', '–')}"],
        ["hf2mlc commit", m["commit"]],
        ["benchmark wall time", f"{results.get('total_seconds', 0) / 60:.1f} min"],
    ]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    text = _table(["", ""], rows) + f"\n\nPackages: {versions}."
    if mixed_runs(results):
        stamps = {name: when(results, name) for name in results["sections"]}
        runs = [[name, str(stamp.get("date")), str(stamp.get("commit")), _load_text(stamp.get("load_at_start")),
                 _load_text(stamp.get("load_at_end"))] for name, stamp in stamps.items()]
        text += ("\n\nThe sections come from more than one run of `benchmarks/run.py` (a partial run replaces the "
                 f"sections it measured and keeps the others; the last one ran {', '.join(results.get('last_run_sections', []))}; "
                 "the table above describes it):\n\n"
                 + _table(["section", "measured", "hf2mlc commit", "load average at the run's start", "at its end"], runs))
    return text


def _checkpoint(results: dict[str, Any]) -> str:
    c = results.get("checkpoint")
    if not c:
        return "Not run."
    s = results["shape"]
    return (
        f"GPT-NeoX, hidden {s['hidden_size']}, {s['num_hidden_layers']} layers, {s['num_attention_heads']} heads, "
        f"intermediate {s['intermediate_size']}, vocab {s['vocab_size']}, tied embeddings, float16: "
        f"{c['params'] / 1e9:.3f} B parameters, {_gb(c['weight_bytes'])} of weights ({_gb(c['bytes'])} on disk with "
        f"LINE's legacy attention buffers), "
        + (f"{c['weight_files']} safetensors files + index. " if c["weight_files"] > 1 else "one model.safetensors. ")
        + f"Checkpoint digest `{c['digest'][:16]}…`; this run {c['action']} it in {c['seconds']:.1f} s."
    )


def _convert(results: dict[str, Any]) -> str:
    conv = results.get("convert")
    if not conv:
        return "Not run."
    rows = []
    for quant in ("q4f16_0", "q0f16"):
        q = conv.get(quant)
        if not q:
            continue
        b = q["baseline"]
        runs = ", ".join(_s(r["call_seconds"]) for r in q["runs"])
        rows.append([
            f"`{quant}` hf2mlc (fast path)", f"**{_s(q['seconds'])}** (runs: {runs})", f"{q['gb_per_s']:.3f} GB/s",
            f"**{q['speedup']:.1f}×**", _mib(q["peak_rss_mb"]), _gb(q["output_bytes"]), f"{q['bits_per_param']:.3f}",
            f"{q['cpu_seconds'] / q['seconds']:.2f}", " / ".join(_others(r) for r in q["runs"]),
        ])
        cold = q.get("cold")
        if cold:
            rows.append([
                f"`{quant}` hf2mlc, checkpoint not in page cache", _s(cold["call_seconds"]),
                f"{conv['weight_bytes'] / cold['call_seconds'] / 1e9:.3f} GB/s",
                f"{b['full_seconds_estimate'] / cold['call_seconds']:.1f}×", _mib(cold["peak_rss_mb"]), "", "",
                f"{cold['cpu_seconds'] / cold['call_seconds']:.2f}", _others(cold),
            ])
        rows.append([
            f"`{quant}` plain numpy baseline", f"{_s(b['full_seconds_estimate'])} (est.; {_s(b['subset_seconds'])} on the subset)",
            f"{b['gb_per_s']:.3f} GB/s", "1×", _mib(b["peak_rss_mb"]), "", "", "", _others(b),
        ])
    table = _table(["conversion", "wall time (median)", "throughput", "vs baseline", "peak RSS", "output", "bits/param",
                    "cores busy", "other work (cores)"], rows)
    q4 = conv.get("q4f16_0") or conv.get("q0f16")
    cached = [r.get("page_cache") for quant in ("q4f16_0", "q0f16") for r in (conv.get(quant) or {}).get("runs", [])]
    cached = [c for c in cached if c is not None]
    span = f"{min(cached):.0%}" if cached and min(cached) == max(cached) else f"{min(cached or [0]):.0%}–{max(cached or [0]):.0%}"
    cache_text = (f"{span} of the checkpoint was in the page cache at the start of these runs"
                  if cached else "page-cache residency was not measured (no `fincore`)")
    notes = [
        f"Throughput is {_gb(conv['weight_bytes'])} of source weights divided by the wall time of `convert_weights` "
        "(reading the checkpoint, quantizing, writing shards with their md5 and tensor-cache.json), each run in a fresh "
        "process, with no previous output present and the page cache flushed of dirty pages (`sync`) first. "
        f"Before each timed run the checkpoint was read through, as after a download ({cache_text}); the "
        "\"not in page cache\" run evicted the checkpoint's pages first (`posix_fadvise DONTNEED`). "
        "\"cores busy\" is the conversion's CPU time / wall time; \"other work\" the cores that other processes "
        "kept busy meanwhile (from /proc/stat; the machine was shared), per run.",
    ]
    if q4:
        b = q4["baseline"]
        notes.append(
            f"The baseline (benchmarks/baseline.py: `safe_open`, one tensor at a time, float16 numpy arithmetic, a "
            f"plain pack loop) converted a subset of {b['tensors']} full-size tensors ({_gb(b['subset_bytes'])}: the "
            f"embedding as embedding and, tied, as `embed_out`, plus layers 0–{results['settings']['baseline_layers'] - 1}) "
            f"at {b['subset_gb_per_s']:.4f} GB/s; its full-model time is that rate applied to the "
            f"{_gb(conv['processed_bytes'])} the converter transforms (every weight, the tied embedding twice)."
        )
    checks = []
    for quant in ("q4f16_0", "q0f16"):
        q = conv.get(quant)
        if q:
            bc = q["bit_check"]
            verdict = "bit for bit identical" if bc["identical"] == bc["tensors"] else f"**{bc['tensors'] - bc['identical']} differ**: {', '.join(bc['mismatched'])}"
            checks.append(f"`{quant}`: {bc['identical']}/{bc['tensors']} output tensors {verdict}")
    notes.append("Fast path vs the baseline on that subset (sha256 of each tensor's bytes in the shards): " + "; ".join(checks)
                 + ". Output size and bits per parameter are therefore the baseline's too; bits per parameter is MLC's "
                 "`BitsPerParam` (stored bytes × 8 / source parameters: the tied embedding is stored twice, so `q0f16` "
                 "shows more than 16).")
    return table + "\n\n" + "\n\n".join(notes)


def _compile(results: dict[str, Any]) -> str:
    comp = results.get("compile")
    if not comp:
        return "Not run."
    rows = []
    for key, c in comp.items():
        if "error" in c:
            rows.append([key, "**failed**", "", "", "", c["error"].strip().splitlines()[-1][:200]])
            continue
        files = ", ".join(f"{name} ({size / 2**20:.1f} MiB)" for name, size in c["files"].items())
        kernels = c["kernels"].get("metal_kernels", 0)
        rows.append([
            f"{c['target']} `{c['quantization']}`", f"**{_s(c['seconds'])}**", _mib(c["peak_rss_mb"]),
            f"{c['context_window_size']} / {c['prefill_chunk_size']}", files + (f"; {kernels} Metal kernels" if kernels else ""),
            _others(c),
        ])
    table = _table(["library", "compile time", "peak RSS", "context / prefill chunk", "output", "other work (cores)"], rows)
    return table + (
        f"\n\nTime of `hf2mlc.compile.compile_model` for the {results['shape']['num_hidden_layers']}-layer model (export, "
        "pipeline, codegen, export_library, and for GPU targets the kernel checks), each in a fresh process; context "
        "windows and prefill chunks are the workflow's defaults from config/config.yaml."
    )


def _host(results: dict[str, Any]) -> str:
    host = results.get("host")
    if not host:
        return "Not run."
    ref = host.get("transformers") or {}
    rows = []
    for key, label in (("q4f16_0", "hf2mlc host build `q4f16_0`"), ("q0f16", "hf2mlc host build `q0f16`"),
                       ("transformers", "transformers, torch float32")):
        h = host.get(key)
        if not h:
            continue
        if "error" in h:
            rows.append([label, "**failed**", "", "", "", "", h["error"].strip().splitlines()[-1][:200]])
            continue
        vs = h.get("vs_transformers")
        if vs and key == "q4f16_0":
            check = (f"vs the q4f16_0 round-trip reference: max rel. error {vs['logits_max_rel_error']:.2e}, top-1 "
                     f"{'agrees' if vs['top1_agrees'] else 'differs'} (vs float weights: {vs['logits_max_rel_error_vs_float']:.2e})")
        elif vs:
            check = (f"max rel. error {vs['logits_max_rel_error']:.2e}, top-1 {'agrees' if vs['top1_agrees'] else 'differs'}, "
                     f"first {vs['greedy_tokens_agreeing']} greedy tokens agree")
        else:
            check = "reference"
        rows.append([
            label, f"{h['prefill_tokens_per_s']:.2f}", f"{h['decode_tokens_per_s']:.2f}",
            f"{vs['prefill']:.2f}× / {vs['decode']:.2f}×" if vs else "1× / 1×",
            _s(h["load_seconds"]), _mib(h["peak_rss_mb"]), _others(h), check,
        ])
    table = _table(["engine", "prefill tok/s", "decode tok/s", "vs transformers (prefill / decode)", "load time",
                    "peak RSS", "other work (cores)", "last-position logits vs transformers"], rows)
    threads = ref.get("torch_threads", "?")
    after = ref.get("rss_after_load_mb") or {}
    if after:
        table += (f"\n\ntransformers' peak RSS includes loading (float16 file to float32 parameters); once loaded "
                  f"it held {after.get('RssAnon', 0):,.0f} MiB of its own memory and {after.get('RssFile', 0):,.0f} MiB "
                  "of mapped files.")
    return table + (
        f"\n\nThe same prompt of {host['prompt_len']} token ids for every engine, then greedy decode steps: "
        f"{host['decode_tokens']} per run and {host['repeats']} run(s) for each hf2mlc build, "
        f"{host['torch_decode_tokens']} per run and {host['torch_repeats']} runs for transformers (its steps are short); "
        "one process per engine, one after another. Tokens/s are medians over runs (prefill) and over every decode "
        "step. hf2mlc's engine drives the library with MLC's runtime calls "
        f"(tensor cache, paged KV cache); transformers runs `GPTNeoXForCausalLM` in float32 with {threads} torch threads "
        "and its KV cache. \"other work\" is the cores other processes kept busy while the engine ran: torch's and "
        "TVM's thread pools both slow down sharply when other processes want the same cores. The `q0f16` build is "
        "compared with transformers on the checkpoint's weights; the `q4f16_0` build with transformers on the weights "
        "after a q4f16_0 round trip (quantize, dequantize), which isolates the engine's error from 4-bit's (the "
        "synthetic weights spread over a 16× range of magnitudes, a hard case for 4 bits). Random weights give "
        "near-ties, so greedy tokens diverge sooner than with a trained model."
    )


ANCHOR_HEADING = "## Side by side with llama.cpp (issue 11)"


def _tokens_per_s(speed: dict[str, Any], phase: str) -> str:
    runs = speed.get(f"{phase}_runs") or []
    text = f"{speed[f'{phase}_tokens_per_s']:.2f} tok/s"
    return text + (" (" + ", ".join(f"{v:.1f}" for v in runs) + ")" if len(runs) > 1 else "")


def _anchor(results: dict[str, Any]) -> str:
    a = results.get("anchor")
    if not a:
        return "Not run."
    hf, ll, r = a["hf2mlc"], a["llama"], a["ratios"]
    m, stamp = results["machine"], when(results, "anchor")
    shared = max((run.get("other_cores") or 0) for run in (hf["convert"], hf["speed"], ll["quantize"], ll["speed"])) > 0.5
    # on a shared machine a ratio says how the two cope with the load, not how they compare idle
    met = lambda ok: ("met" if ok else "**not met**") + (" (machine shared: rerun idle)" if shared else "")  # noqa: E731
    rows = [
        ["fp16 → 4-bit conversion", f"{_s(hf['convert']['call_seconds'])} (`{a['quantization']}`)",
         f"{_s(ll['quantize']['call_seconds'])} (Q4_0)", f"{r['convert_time']:.2f}× the time", "≤ 1.0×",
         met(r["convert_time"] <= 1.0), f"{_others(hf['convert'])} / {_others(ll['quantize'])}"],
        [f"prefill, {a['prompt_len']} tokens", _tokens_per_s(hf["speed"], "prefill"), _tokens_per_s(ll["speed"], "prefill"),
         f"{r['prefill']:.2f}× the speed", "≥ 1.0×", met(r["prefill"] >= 1.0), f"{_others(hf['speed'])} / {_others(ll['speed'])}"],
        [f"decode, {a['decode_tokens']} greedy steps", _tokens_per_s(hf["speed"], "decode"), _tokens_per_s(ll["speed"], "decode"),
         f"{r['decode']:.2f}× the speed", "≥ 1.0×", met(r["decode"] >= 1.0), f"{_others(hf['speed'])} / {_others(ll['speed'])}"],
    ]
    runs = a.get("speed_runs", 1)
    table = _table(["same checkpoint, {} threads, one run".format(a["threads"]), "hf2mlc", f"llama.cpp {ll['version']}",
                    "hf2mlc / llama.cpp", "goal", "status", "other work (cores): hf2mlc / llama.cpp"], rows)
    return table + (
        f"\n\nMeasured {stamp.get('date', '')} on {m.get('cpu_model', '')}, {m.get('cores', '?')} usable cores, hf2mlc commit "
        f"{stamp.get('commit', '?')}; load average at the start of that run {_load_text(stamp.get('load_at_start'))}; both "
        "sides of every ratio in one run, one after the other"
        + (f"; {runs} speed runs of each engine, each a fresh process, the engines alternating: tokens/s are the "
           "medians over runs (within a run: prefill once, decode the median step), the runs in brackets. " if runs > 1 else ". ")
        + _convert_elsewhere(results)
        + "\"other work\" is how many cores other processes kept busy during each measurement: when it is well above 0 "
        "the machine was shared and every figure here is slower than on an idle machine (spinning thread pools, "
        "llama.cpp's OpenMP and TVM's alike, suffer most in decode). "
        f"hf2mlc: `convert_weights` to `{a['quantization']}` from the safetensors checkpoint (page cache warm), then the "
        f"host library through hf2mlc's engine with TVM_NUM_THREADS={a['threads']}. llama.cpp: llama-cpp-python "
        f"{ll['version']} built from its sdist (`{ll.get('system_info', '').strip()}`), AMX off; the checkpoint as a "
        f"float16 GGUF written with `gguf` ({_gb(ll['gguf']['bytes'])}, {_s(ll['gguf']['seconds'])}, not counted), "
        f"`llama_model_quantize` to Q4_0 with nthread={a['threads']} (what `llama-quantize` runs), then `Llama.eval` "
        f"with n_threads={a['threads']}. Both get the same {a['prompt_len']} prompt token ids and decode greedily."
    )


LINE_HEADING = "## LINE-scale workflow run (issue 11)"
GOALS_11_HEADING = "## Goals (issue 11)"
#: Issue 11's goals for the 3.6B stand-in's workflow run.
EVAL_TOKENS_GOAL, EVAL_MINUTES_GOAL, JOB_RSS_GOAL_GIB, ALL_MINUTES_GOAL = 10_000, 10, 8, 20


def _scaled(job: dict[str, Any], factor: float) -> float:
    """A job's wall time with its token-proportional part (``scoring_seconds``) scaled by ``factor``;
    the whole job scaled (an upper bound) when its log did not say how long scoring took."""
    scoring = job.get("scoring_seconds")
    return job["seconds"] + (scoring if scoring is not None else job["seconds"]) * (factor - 1)


def line_extrapolation(line: dict[str, Any]) -> dict[str, Any]:
    """What the run's per-token rates imply for the workflow's default 10,000-token evaluation: the
    scoring part of the reference and of each evaluation scaled by 10,000 / tokens scored, the rest of
    those jobs (loading, writing, the evaluation's greedy answers) and every other job as measured."""
    tokens = line.get("tokens") or 0
    factor = EVAL_TOKENS_GOAL / tokens if tokens else None
    ref = line["reference"]
    out: dict[str, Any] = {"factor": factor, "per_quant": {}}
    if not factor or ref["seconds"] is None:
        return out
    ref_s = _scaled(ref, factor)
    for quant, ev in line["evaluations"].items():
        out["per_quant"][quant] = {"reference_s": ref_s, "evaluate_s": _scaled(ev, factor),
                                   "total_s": ref_s + _scaled(ev, factor)}
    grows = ref_s - ref["seconds"] + sum(_scaled(ev, factor) - ev["seconds"] for ev in line["evaluations"].values())
    out["all_s"] = line["seconds"] + grows
    return out


def _convert_elsewhere(results: dict[str, Any], *, brief: bool = False) -> str:
    """When the convert section was measured in another run than the anchor: its q4f16_0 time, said not
    to be part of the ratio (a ratio is only ever taken within one run)."""
    q4 = (results.get("convert") or {}).get("q4f16_0")
    if not q4 or not results.get("anchor") or _run_of(when(results, "convert")) == _run_of(when(results, "anchor")):
        return ""
    stamp = when(results, "convert")
    if brief:
        return f"; the convert section's {_s(q4['seconds'])} (median) is from another run ({stamp.get('date')}), not in this ratio"
    return (f"The convert section comes from another run ({stamp.get('date')}, commit {stamp.get('commit')}): "
            f"`q4f16_0` {_s(q4['seconds'])} (median); a ratio is only formed within one run, so it is not divided by "
            "this llama.cpp time. ")


def goals_11(results: dict[str, Any]) -> list[list[str]]:
    """Issue 11's goals: the anchor's ratios and the LINE-scale run, met or not as measured."""
    rows: list[list[str]] = []
    full = results["scale"] == "full"
    verdict = lambda ok, note="": (("met" if ok else "**not met**") if full else f"n/a at {results['scale']} scale") + note  # noqa: E731
    a = results.get("anchor")
    if a:
        r = a["ratios"]
        rows += [
            ["host q4f16_0 prefill vs llama.cpp Q4_0 (same checkpoint, 2 threads)", "≥ 1.0×", f"{r['prefill']:.2f}×", verdict(r["prefill"] >= 1)],
            ["host q4f16_0 decode vs llama.cpp Q4_0", "≥ 1.0×", f"{r['decode']:.2f}×", verdict(r["decode"] >= 1)],
            ["q4f16_0 conversion time vs llama.cpp's Q4_0 quantize", "≤ 1.0×",
             f"{r['convert_time']:.2f}× ({_s(a['hf2mlc']['convert']['call_seconds'])} vs "
             f"{_s(a['llama']['quantize']['call_seconds'])}, one run){_convert_elsewhere(results, brief=True)}",
             verdict(r["convert_time"] <= 1)],
        ]
    else:
        rows += [["side by side with llama.cpp", "", "not measured", "–"]]
    line = results.get("line")
    if line:
        ext = line_extrapolation(line)
        for quant, e in ext["per_quant"].items():
            rows.append([f"reference + evaluation of {EVAL_TOKENS_GOAL:,} tokens, `{quant}`", f"≤ {EVAL_MINUTES_GOAL} min",
                         f"{e['total_s'] / 60:.1f} min (extrapolated from {line['tokens']:,} tokens: "
                         f"{e['reference_s'] / 60:.1f} + {e['evaluate_s'] / 60:.1f} min)",
                         verdict(e["total_s"] <= EVAL_MINUTES_GOAL * 60, " (extrapolated)")])
        top = max((j for j in line["jobs"] if j["max_rss_mb"] is not None), key=lambda j: j["max_rss_mb"], default=None)
        if top:
            rows.append([f"largest peak RSS of a job of `snakemake all`", f"≤ {JOB_RSS_GOAL_GIB} GiB",
                         f"{top['max_rss_mb'] / 1024:.2f} GiB ({top['rule']} {top['job']})",
                         verdict(top["max_rss_mb"] <= JOB_RSS_GOAL_GIB * 1024)])
        if "all_s" in ext:
            rows.append([f"whole `snakemake --cores {line['cores']} all`, default evaluation ({EVAL_TOKENS_GOAL:,} tokens)",
                         f"≤ {ALL_MINUTES_GOAL} min", f"{ext['all_s'] / 60:.1f} min (extrapolated; measured "
                         f"{line['seconds'] / 60:.1f} min with {line['tokens']:,} tokens)",
                         verdict(ext["all_s"] <= ALL_MINUTES_GOAL * 60, " (extrapolated)")])
    else:
        rows.append(["LINE-scale workflow run", "", "not measured", "–"])
    return rows


def _line(results: dict[str, Any]) -> str:
    line = results.get("line")
    if not line:
        return "Not run."
    rows = []
    for j in line["jobs"]:
        rss = "–" if j["max_rss_mb"] is None else f"{j['max_rss_mb']:,.0f} MB ({j['max_rss_mb'] / 1024:.2f} GiB)"
        cores = f"{j['cpu_seconds'] / j['seconds']:.2f}" if j.get("cpu_seconds") and j["seconds"] > 0 else "–"
        rows.append([f"{j['rule']} {j['job']}", _s(j["seconds"]), rss, cores])
    top = max((j["max_rss_mb"] for j in line["jobs"] if j["max_rss_mb"] is not None), default=None)
    rows.append([f"**whole `snakemake --cores {line['cores']} all`**", f"**{_s(line['seconds'])}** ({line['seconds'] / 60:.1f} min)",
                 f"{top:,.0f} MB (largest job)" if top is not None else "–", ""])
    table = _table(["job", "wall", "peak RSS (max_rss)", "cores busy"], rows)
    disk = line["disk_bytes"]
    parts = ", ".join(f"{name} {_gb(size)}" for name, size in sorted(disk.items(), key=lambda kv: -kv[1]) if name != "total")
    ext = line_extrapolation(line)
    def rate(job: dict[str, Any]) -> str:
        scoring = job.get("scoring_seconds")
        if scoring:
            return (f"{line['tokens'] / scoring:.2f} tok/s while scoring ({_s(scoring)} of its {_s(job['seconds'])}; the "
                    "rest loading, writing" + (" and the greedy answers)" if "delta_perplexity_pct" in job else ")"))
        return f"{line['tokens'] / job['seconds']:.2f} tok/s over the whole job ({_s(job['seconds'])})"

    rates = [f"reference {rate(line['reference'])}"] if line["reference"]["seconds"] else []
    rates += [f"evaluate `{q}` {rate(ev)}, Δ perplexity {ev['delta_perplexity_pct']:+.2f} %, top-1 "
              f"{ev['top1_agreement']:.3f}" for q, ev in line["evaluations"].items()]
    per_quant = "; ".join(f"`{q}` {e['reference_s'] / 60:.1f} min reference + {e['evaluate_s'] / 60:.1f} min evaluation"
                          for q, e in ext["per_quant"].items())
    return table + (
        f"\n\n**Disk** under results/: {_gb(disk['total'])} in all ({parts}; one `du`, so a hard-linked file — the "
        "bundle store under results/versions links the packaged files — counts once, in the folder du met first)."
        f"\n\nThe checkpoint as a user's local model (`source:` a directory holding its safetensors, LINE's "
        "`tokenizer_config.json`/`special_tokens_map.json` and, for `spiece.model`, llm-jp's SentencePiece v2.2 from "
        "shared/data: the closest public relative of LINE's tokenizer), the repository's config.yaml otherwise, in a "
        f"scratch copy of the workflow started from empty results; other work on the machine: {_others(line)} cores. "
        f"Per job: the `s` and `max_rss` columns of its rule's `benchmark:` TSV (max_rss in MB as Snakemake writes it). "
        f"**Evaluation length:** `evaluation.max_tokens: {line['max_tokens']}` of `{line['text']}` "
        f"({line['tokens']:,} tokens scored) instead of the default {EVAL_TOKENS_GOAL:,}, which does not fit a benchmark "
        f"run. Measured rates: {'; '.join(rates)}. **Extrapolated, not measured**, to {EVAL_TOKENS_GOAL:,} tokens "
        f"(the scoring part of those jobs ×{ext['factor']:.1f}, the rest as measured; rows are the text's documents, so "
        f"more tokens are more rows of the same lengths): {per_quant}."
    )


def _workflow(results: dict[str, Any]) -> str:
    wf = results.get("workflow")
    if not wf:
        return "Not run."
    ch = wf["iphone_context_change"]
    rows = [
        ["bring the scratch copy up to date", f"{wf['bring_up']['seconds']:.1f} s", "", ", ".join(wf["bring_up"]["jobs"]) or "nothing"],
        ["no-op `snakemake -n all`", f"**{wf['dry_run_noop']['median_seconds']:.2f} s** (runs: {', '.join(map(str, wf['dry_run_noop']['seconds']))})",
         _others(wf["dry_run_noop"]), "nothing" if wf["dry_run_noop"]["nothing_to_do"] else ", ".join(wf["dry_run_noop"]["jobs"])],
        ["no-op `snakemake --cores 2 all`", f"**{wf['real_noop']['median_seconds']:.2f} s** (runs: {', '.join(map(str, wf['real_noop']['seconds']))})",
         _others(wf["real_noop"]), "nothing" if wf["real_noop"]["nothing_to_do"] else ", ".join(wf["real_noop"]["jobs"])],
        [f"iPhone context window {ch['from']} → {ch['to']}, `snakemake --cores 2 all`", f"**{ch['seconds']:.1f} s**",
         _others(ch), ", ".join(ch["jobs"])],
        [f"back to {ch['from']}", f"{wf['restore']['seconds']:.1f} s", _others(wf["restore"]), ", ".join(wf["restore"]["jobs"])],
    ]
    return _table(["run (demo model)", "wall time", "other work (cores)", "jobs run"], rows) + (
        "\n\nIn a scratch copy of the workflow (benchmarks/work/workflow) holding a completed demo run; wall time of the "
        "whole `snakemake` command, Python start-up and DAG construction included."
        + ("" if wf["up_to_date_at_end"] else " **The copy was not up to date at the end.**")
    )


NOTES_HEADING = "## Notes on the goals (written by hand, kept across runs)"


def _kept_notes(previous: str | None) -> list[str]:
    """The hand-written notes section of ``previous`` (what an unmet goal would take), which a new run
    keeps: the numbers are the harness's, the reasons are people's."""
    if not previous or NOTES_HEADING + "\n" not in previous:
        return []
    start = previous.index(NOTES_HEADING + "\n") + len(NOTES_HEADING)
    end = previous.find("\n## ", start)
    return [NOTES_HEADING, previous[start: end if end >= 0 else len(previous)].strip()]


def _goals_11_text(results: dict[str, Any]) -> str:
    return _table(["goal", "target", "measured", "status"], goals_11(results))


def render(results: dict[str, Any], previous: str | None = None) -> str:
    """The whole report from the (merged) raw numbers, however many runs measured them; of
    ``previous`` (the report it replaces) only the hand-written notes are kept."""
    scale = results["scale"]
    s = results["shape"]
    title = ("LINE-shaped 3.6B checkpoint" if scale == "full"
             else f"{scale} scale ({s['num_hidden_layers']} layers, hidden {s['hidden_size']}) — not the full model")
    parts = [
        f"# hf2mlc benchmarks: {title}",
        f"Written by `python benchmarks/run.py{'' if scale == 'full' else ' --scale ' + scale}` "
        f"(sections: {', '.join(results['sections'])}); how to rerun and what each number means: benchmarks/README.md. "
        f"MLP dtype (`ffn_out_dtype`): {results['ffn_out_dtype']}.",
        "## Machine", _machine(results),
        "## Goals (issue 6)",
        _table(["goal", "target", "measured", "status"], [list(r) for r in goals(results)])
        + ("" if scale == "full" else "\n\nThe goals are for the full 3.6B model; at this scale the numbers are only indicative."),
        GOALS_11_HEADING, _goals_11_text(results),
        "## Synthetic checkpoint", _checkpoint(results),
        "## Weight conversion", _convert(results),
        "## Compile", _compile(results),
        "## Host prefill and decode", _host(results),
        ANCHOR_HEADING, _anchor(results),
        "## Workflow reruns", _workflow(results),
        LINE_HEADING, _line(results),
        *_kept_notes(previous),
    ]
    if results.get("errors"):
        parts += ["## Errors"] + [f"**{k}**:\n\n```\n{v.strip()[-1500:]}\n```" for k, v in results["errors"].items()]
    return "\n\n".join(parts) + "\n"
