"""What each quantization method and format costs, on a model that can show it: benchmarks/QUALITY.md.

    python benchmarks/quality.py                       # every method × format this checkout has
    python benchmarks/quality.py --methods rtn --formats q4f16_0 --max-windows 8   # a quick look

For every (method, format) the benchmark model (:mod:`benchmarks.quality_model`, made first if missing)
is converted with hf2mlc's converter, run by the host engine (:class:`hf2mlc.runtime.Engine`, a host
library compiled once per format) on every window of the held-out split, and compared position by position
with transformers' float32 forward pass of the float16 checkpoint: Δ perplexity with a 95 % interval,
mean and p99 KL(reference ‖ build), top-1 agreement, MLC's bits per parameter, conversion wall time.
Calibrated methods calibrate on the model's calibration split (disjoint from the held-out split).

The interval: every window is scored from an empty context, so windows are the independent units; the
per-window mean of (build NLL − reference NLL) gives the mean log perplexity ratio and its standard error,
and the interval is exp(mean ± 1.96·SE) − 1.  Each build is also checked against transformers holding the
numbers of its own tensor cache, dequantized by numpy (:func:`build_check`): that
the engine loads a calibrated bundle unchanged and computes exactly what its weights say.

The 3.6B stand-in's RTN conversion time and memory come from benchmarks/RESULTS.md (``benchmarks/run.py``),
read from its conversion table, not restated by hand.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "src"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from benchmarks import machine, quality_model  # noqa: E402
from hf2mlc.errors import UserError  # noqa: E402

#: The formats of issue 14, in table order (those this checkout's registry lacks are reported as missing).
FORMATS = ("q4f16_0", "q4f16_1", "q3f16_0", "q3f16_1")
#: The unquantized float16 build: a control row (its Δ is float16 rounding only).
CONTROL = "q0f16"
RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"
QUALITY_MD = REPO / "benchmarks" / "QUALITY.md"
Z95 = 1.959964
#: Build-check bound: the workflow's default (config/config.yaml max_logit_rel_error).
MAX_LOGIT_REL_ERROR = 0.02
#: The build check's prompt: a prefill of the first held-out tokens, then this many decode steps.
CHECK_TOKENS = 48
CHECK_DECODE_STEPS = 4


def _progress(message: str) -> None:
    print(f"[quality] {message}", file=sys.stderr, flush=True)


def available_methods() -> list[str]:
    """The quantization methods this checkout implements (just ``rtn`` before calibrated methods exist)."""
    try:
        from hf2mlc.quantization import METHODS
    except ImportError:
        return ["rtn"]
    return list(METHODS)


def available_formats() -> list[str]:
    from hf2mlc.quantization import QUANTIZATIONS

    return [f for f in FORMATS if f in QUANTIZATIONS]


def calibrated(method: str) -> bool:
    return method not in ("rtn", "none")


# ---------------------------------------------------------------------------------------------------
# Builds


def convert(model_dir: Path, out: Path, fmt: str, method: str) -> dict[str, Any]:
    """Weights for (format, method) through the workflow's converter; returns its stats (with ``seconds``)."""
    from hf2mlc.convert import convert_weights

    kwargs: dict[str, Any] = {"progress": False}
    if method != "rtn":
        parameters = inspect.signature(convert_weights).parameters
        if "method" not in parameters:
            raise UserError(f"this checkout's convert_weights has no method parameter; cannot run {method!r}.")
        kwargs["method"] = method
        # The calibration split, checked by the converter to share nothing with the held-out split.
        kwargs["calibration_text"] = str((model_dir / quality_model.SPLIT_FILES["calibration"]).resolve())
        if "evaluation_text" in parameters:
            kwargs["evaluation_text"] = str((model_dir / quality_model.SPLIT_FILES["heldout"]).resolve())
    start = time.perf_counter()
    stats = convert_weights(model_dir, out, fmt, **kwargs)
    stats["seconds"] = round(time.perf_counter() - start, 2)
    return stats


def compile_host(model_dir: Path, out: Path, fmt: str) -> Path:
    """The host library of one format (every method of that format runs on it unchanged)."""
    from hf2mlc.compile import compile_model
    from hf2mlc.model.gpt_neox.config import GPTNeoXConfig
    from hf2mlc.spec import TargetSpec

    lib_name = f"quality-{fmt}-host"
    libs = sorted(out.glob("*.so"))
    if not libs:
        out.mkdir(parents=True, exist_ok=True)
        spec = TargetSpec.create(target="host", quantization=fmt, lib_name=lib_name,
                                 context_window_size=quality_model.SEQ_LEN, prefill_chunk_size=quality_model.SEQ_LEN)
        compile_model(GPTNeoXConfig.from_file(model_dir), spec, out, progress=False)
        libs = sorted(out.glob("*.so"))
    return libs[0]


# ---------------------------------------------------------------------------------------------------
# Scoring


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class Score:
    """Per-window sums and per-token KL of one build against the reference."""

    def __init__(self) -> None:
        self.window_delta: list[float] = []  # mean (build NLL − reference NLL) per window
        self.nll = 0.0
        self.kl: list[np.ndarray] = []
        self.top1 = 0
        self.tokens = 0

    def add(self, lp_ref: np.ndarray, lp: np.ndarray, targets: np.ndarray) -> None:
        rows = np.arange(len(targets))
        nll_ref, nll = -lp_ref[rows, targets], -lp[rows, targets]
        self.window_delta.append(float((nll - nll_ref).mean()))
        self.nll += float(nll.sum())
        self.kl.append((np.exp(lp_ref) * (lp_ref - lp)).sum(axis=-1))
        self.top1 += int((lp.argmax(-1) == lp_ref.argmax(-1)).sum())
        self.tokens += len(targets)

    def summary(self, reference_ppl: float) -> dict[str, Any]:
        deltas = np.asarray(self.window_delta)
        mean, se = float(deltas.mean()), float(deltas.std(ddof=1) / math.sqrt(len(deltas))) if len(deltas) > 1 else 0.0
        kl = np.concatenate(self.kl)
        return {
            "perplexity": math.exp(self.nll / self.tokens),
            "delta_ppl_pct": (math.exp(mean) - 1) * 100,
            "delta_ppl_pct_ci95": [(math.exp(mean - Z95 * se) - 1) * 100, (math.exp(mean + Z95 * se) - 1) * 100],
            "delta_ppl_abs": math.exp(self.nll / self.tokens) - reference_ppl,
            "kl_mean": float(kl.mean()),
            "kl_p99": float(np.quantile(kl, 0.99)),
            "top1": self.top1 / self.tokens,
            "tokens": self.tokens,
            "windows": len(deltas),
        }


def score_builds(model_dir: Path, builds: dict[str, tuple[Path, Path]], windows: list,
                 finish_by: float | None = None) -> dict[str, Any]:
    """Reference perplexity and each build's :class:`Score` over ``windows`` (one reference pass per window).

    ``finish_by`` (a ``time.time()``): after the first window, keep only as many windows, evenly spaced
    over ``windows`` (the first included), as its time per window lets finish by then.
    """
    from hf2mlc.check import original_reference, transformers_logits
    from hf2mlc.runtime import Engine

    engines = {label: Engine(lib, weights) for label, (lib, weights) in builds.items()}
    reference = original_reference(model_dir)
    scores = {label: Score() for label in builds}
    ref_nll, tokens = 0.0, 0
    start = time.perf_counter()
    index = 0
    while index < len(windows):
        inputs, targets = windows[index]
        targets = np.asarray(targets)
        lp_ref = _log_softmax(transformers_logits(reference, inputs))
        ref_nll -= float(lp_ref[np.arange(len(targets)), targets].sum())
        tokens += len(targets)
        for label, engine in engines.items():
            engine.reset()
            scores[label].add(lp_ref, _log_softmax(engine.logits_all(inputs)), targets)
        if index == 0 and finish_by is not None:
            fitted = fit_windows(windows, time.perf_counter() - start, finish_by - time.time())
            if len(fitted) < len(windows):
                windows = fitted
                _progress(f"time left for {len(windows)} windows (evenly spaced) before --finish-by")
        index += 1
        if index % 10 == 0 or index == len(windows):
            elapsed = time.perf_counter() - start
            _progress(f"scored {index}/{len(windows)} windows × {len(engines)} builds, "
                      f"about {elapsed / index * (len(windows) - index):.0f} s left")
    del engines, reference
    gc.collect()
    reference_ppl = math.exp(ref_nll / tokens)
    return {"reference_perplexity": reference_ppl, "tokens": tokens, "windows": len(windows),
            "builds": {label: score.summary(reference_ppl) for label, score in scores.items()}}


def fit_windows(windows: list, seconds_per_window: float, seconds_left: float) -> list:
    """The windows, evenly spaced over all of them and starting with the first (already scored), that
    fit in ``seconds_left`` at ``seconds_per_window``; at least two, so that an interval exists."""
    fit = int(seconds_left / max(seconds_per_window, 1e-9)) + 1
    if fit >= len(windows):
        return list(windows)
    return evenly_spaced(windows, max(2, fit))


def evenly_spaced(windows: list, count: int) -> list:
    """``count`` of ``windows`` spread over all of them, the first and the last included: a subset whose
    scores stand for the whole split, not for its beginning."""
    return [windows[int(i)] for i in np.linspace(0, len(windows) - 1, count).round()]


def build_check(model_dir: Path, weights: Path, lib: Path, fmt: str, ids: list[int]) -> float:
    """Largest relative logit error of the engine (a prefill, then decode steps) against transformers holding
    the numbers of the build's own tensor cache, dequantized by numpy (:func:`hf2mlc.check.dequantized_reference`)."""
    from hf2mlc.check import dequantized_reference, original_reference, transformers_logits
    from hf2mlc.quantization import get_quantization
    from hf2mlc.runtime import Engine

    ids = ids[:CHECK_TOKENS]
    engine = Engine(lib, weights)
    got = [engine.prefill(ids[:-CHECK_DECODE_STEPS])] + [engine.decode(t) for t in ids[-CHECK_DECODE_STEPS:]]
    del engine
    quantized = get_quantization(fmt).is_quantized
    model = dequantized_reference(model_dir, weights, fmt) if quantized else original_reference(model_dir)
    want = transformers_logits(model, ids)[len(ids) - CHECK_DECODE_STEPS - 1 :]
    del model
    gc.collect()
    return max(float(np.abs(g - w).max() / np.abs(w).max()) for g, w in zip(got, want))


# ---------------------------------------------------------------------------------------------------
# The 3.6B row and the goals


def stand_in_rtn_row(results_md: Path = RESULTS_MD) -> dict[str, str] | None:
    """The q4f16_0 fast-path row of RESULTS.md's conversion table: wall time, peak RSS, bits/param."""
    if not results_md.is_file():
        return None
    text = results_md.read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("| `q4f16_0` hf2mlc (fast path)"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            date = re.search(r"^\| date \| (.+?) \|$", text, flags=re.M)
            runs = re.search(r"\(runs: (.*)\)", cells[1])
            return {"wall": re.sub(r"\*\*|\s*\(runs:.*\)", "", cells[1]), "peak_rss": cells[4],
                    "bits_per_param": cells[6], "date": date.group(1) if date else "?",
                    "runs": len(runs.group(1).split(",")) if runs else 1}
    return None


def goals(rows: dict[tuple[str, str], dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """Issue 14's goals on the benchmark model: (goal, target, measured, status)."""
    out: list[tuple[str, str, str, str]] = []
    rtn = rows.get(("rtn", "q4f16_0"))
    if rtn is None:
        return [("all goals", "need rtn q4f16_0", "not measured", "not measured")]

    def best(candidates: list[tuple[tuple[str, str], dict[str, Any]]]) -> tuple[tuple[str, str], dict[str, Any]] | None:
        return min(candidates, key=lambda item: item[1]["kl_mean"]) if candidates else None

    q4 = best([(k, v) for k, v in rows.items() if k[1] == "q4f16_0" and calibrated(k[0])])
    if q4 is None:
        out.append(("best calibrated q4f16_0 ≤ ½ RTN q4f16_0 (mean KL and Δ perplexity)", "≤ 50 %",
                    "no calibrated method in this checkout", "not measured"))
    else:
        (method, _), v = q4
        kl_ratio, ppl_ratio = v["kl_mean"] / rtn["kl_mean"], v["delta_ppl_pct"] / rtn["delta_ppl_pct"]
        out.append((f"best calibrated q4f16_0 ({method}) ≤ ½ RTN q4f16_0: mean KL", "≤ 50 %",
                    f"{kl_ratio:.0%} ({v['kl_mean']:.5f} vs {rtn['kl_mean']:.5f})", "met" if kl_ratio <= 0.5 else "not met"))
        noise = (f"; RTN's own interval [{rtn['delta_ppl_pct_ci95'][0]:+.2f}, {rtn['delta_ppl_pct_ci95'][1]:+.2f}] % "
                 "includes 0, so this is within noise" if rtn.get("delta_ppl_pct_ci95", [1])[0] <= 0 else "")
        out.append((f"best calibrated q4f16_0 ({method}) ≤ ½ RTN q4f16_0: Δ perplexity", "≤ 50 %",
                    f"{ppl_ratio:.0%} ({v['delta_ppl_pct']:+.2f} % vs {rtn['delta_ppl_pct']:+.2f} %){noise}",
                    "met" if ppl_ratio <= 0.5 else "not met"))
    q3 = best([(k, v) for k, v in rows.items() if k[1].startswith("q3") and calibrated(k[0])])
    if q3 is None:
        out.append(("best calibrated 3-bit no worse than RTN q4f16_0", "mean KL and Δ perplexity ≤ RTN q4f16_0's",
                    "no calibrated 3-bit build in this checkout", "not measured"))
    else:
        (method, fmt), v = q3
        ok = v["kl_mean"] <= rtn["kl_mean"] and v["delta_ppl_pct"] <= rtn["delta_ppl_pct"]
        out.append((f"best calibrated 3-bit ({method} {fmt}) no worse than RTN q4f16_0",
                    "mean KL and Δ perplexity ≤ RTN q4f16_0's",
                    f"KL {v['kl_mean']:.5f} vs {rtn['kl_mean']:.5f}; Δ {v['delta_ppl_pct']:+.2f} % vs {rtn['delta_ppl_pct']:+.2f} %",
                    "met" if ok else "not met"))
    checked = [(k, v) for k, v in rows.items() if calibrated(k[0])]
    if not checked:
        out.append(("every calibrated build loads in the host engine unchanged and computes its numpy-dequantized weights",
                    f"max rel. logit error ≤ {MAX_LOGIT_REL_ERROR}", "no calibrated build in this checkout", "not measured"))
    else:
        worst = max(v["check_max_rel_error"] for _, v in checked)
        out.append(("every calibrated build loads in the host engine unchanged and computes its numpy-dequantized weights",
                    f"max rel. logit error ≤ {MAX_LOGIT_REL_ERROR}", f"{len(checked)} builds, worst {worst:.2g}",
                    "met" if worst <= MAX_LOGIT_REL_ERROR else "not met"))
    return out


# ---------------------------------------------------------------------------------------------------
# Report


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def render(results: dict[str, Any]) -> str:
    stats, m = results["model"], results["machine"]
    rows = {(r["method"], r["format"]): r for r in results["rows"]}
    table = []
    for r in results["rows"]:
        low, high = r["delta_ppl_pct_ci95"]
        table.append([f"`{r['method']}`", f"`{r['format']}`", f"{r['perplexity']:.3f}",
                      f"{r['delta_ppl_pct']:+.2f} % [{low:+.2f}, {high:+.2f}]", f"{r['kl_mean']:.5f}",
                      f"{r['kl_p99']:.3f}", f"{r['top1']:.2%}", f"{r['bits_per_param']:.3f}", f"{r['convert_seconds']:.1f} s",
                      f"{r['check_max_rel_error']:.1e}"])
    stand_in = results.get("stand_in")
    stand_in_text = (
        f"| `rtn` | `q4f16_0` | 3.6B LINE-shaped stand-in (`benchmarks/synthetic.py`, random weights: no quality) "
        f"| {stand_in['wall']} | {stand_in['peak_rss']} | {stand_in['bits_per_param']} |\n\n"
        f"From [RESULTS.md](RESULTS.md) (`python benchmarks/run.py`, measured {stand_in['date']}; "
        + (f"median of {stand_in['runs']} runs, each" if stand_in.get("runs", 1) > 1 else "one run,")
        + " in a fresh process, checkpoint in the page cache)."
        if stand_in else "RESULTS.md has no q4f16_0 conversion row: run `python benchmarks/run.py`."
    )
    missing = list(results["missing"])
    if results["windows"] < results["all_windows"]:
        missing.append(f"scored {results['windows']} of the held-out split's {results['all_windows']} windows "
                       "(`--max-windows` or `--finish-by`): the intervals are wider than a full run's")
    built = sorted({r.get("built_at", "?") for r in results["rows"]})
    notes = "\n".join(f"- {line}" for line in missing) if missing else "- none"
    goal_rows = [list(g) for g in goals(rows)]
    chars, toks = stats["characters"], stats["tokens"]
    return f"""# hf2mlc quality benchmark: every method × format on a model that can show the difference

Written by `python benchmarks/quality.py`; how it measures: that file's docstring and benchmarks/README.md.

## Goals (issue 14)

{_table(["goal", "target", "measured", "status"], goal_rows)}

## The benchmark model

`benchmarks/quality_model.py`: GPT-NeoX with LINE's options (tied embeddings, sequential residual, rotary_pct
1.0, float16 checkpoint, LINE's config spelling and special ids), hidden {stats['recipe']['hidden_size']},
{stats['recipe']['num_layers']} layers, {stats['recipe']['num_heads']} heads, intermediate
{stats['recipe']['intermediate_size']}, vocab {stats['recipe']['vocab_size']}: **{stats['parameters']:,}
parameters**. Trained from scratch on Natsume Soseki's *Wagahai wa neko de aru* (public domain, Aozora Bunko;
ruby and editor's notes stripped), read from the shared data directory at run time: training split
{chars['train']:,} characters ({toks['train']:,} tokens), {stats['recipe']['train_steps']} steps of
{stats['recipe']['batch_size']} × {stats['recipe']['seq_len']} tokens ({stats['train_tokens_seen']:,} tokens seen,
{stats['train_seconds'] / 60:.1f} min on one thread at {stats['train_tokens_per_second']:.0f} tokens/s;
whole recipe {stats['total_seconds'] / 60:.1f} min). Tokenizer: SentencePiece unigram trained on the
training split, byte fallback, nmt_nfkc. Held-out split (never trained or calibrated on):
{chars['heldout']:,} characters, {toks['heldout']:,} tokens; calibration split {chars['calibration']:,}
characters, {toks['calibration']:,} tokens.

**float32 held-out perplexity: {results['reference_perplexity']:.3f}** (transformers, float32 arithmetic on the
float16 weights, {results['tokens']:,} tokens in {results['windows']} windows of {quality_model.SEQ_LEN} evenly spaced
over the split's {results['all_windows']}, each from an empty context; on all {results['all_windows']} windows, as
the recipe measured it in torch: {stats['heldout_perplexity_fp32_of_fp16_weights']:.2f}; before training:
{stats['initial_heldout_perplexity']:.0f}; uniform: {stats['recipe']['vocab_size']}).

## Every method × format on the held-out split

{_table(["method", "format", "perplexity", "Δ perplexity [95 % interval]", "mean KL", "p99 KL", "top-1",
         "bits/param", "conversion (shared machine)", "build check"], table)}

Reference: the float32 perplexity above. Δ perplexity is exp(mean per-token NLL difference) − 1 with its
interval over windows; KL is KL(float32 ‖ build) per token in nats; top-1 is the fraction of positions where
the build's most likely token is the reference's. Bits/param is MLC's `BitsPerParam` (stored bytes × 8 /
source parameters; the tied embedding is stored twice, as in MLC). Conversion is the wall time of
`hf2mlc.convert.convert_weights` (calibration included for calibrated methods) on a shared machine. Build check:
the largest relative logit error of the host engine against transformers holding the tensor cache's own
numbers, dequantized by numpy (bound {MAX_LOGIT_REL_ERROR}). The `{CONTROL}` row is the unquantized float16
control.

### The 3.6B stand-in (conversion cost only)

| method | format | model | conversion wall time | peak RSS | bits/param |
| --- | --- | --- | --- | --- | --- |
{stand_in_text}

## Not measured in this run

{notes}

## Machine

{m['cpu_model']} ({m['cpu_features']}), {m['cores']} usable cores, {m['memory_gib']} GiB; {m['date']}; load
average at start {m['load_at_start']['load_1m']}, at end {results['load_at_end']['load_1m']} (the machine was
shared: timings are slower than on an idle one, quality numbers are unaffected); hf2mlc commit {m['commit']}
(builds converted and checked at {', '.join(built)});
benchmark wall time {results['total_seconds'] / 60:.1f} min.
"""


# ---------------------------------------------------------------------------------------------------
# Entry point


def run(methods: list[str], formats: list[str], *, work: Path, text: Path | None, max_windows: int | None,
        check: bool, fresh: bool = False, finish_by: float | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    info = machine.describe(REPO, work)
    model_dir = quality_model.ensure_model(text, work)
    stats = quality_model.load_stats(model_dir)
    out = work / "quality" / model_dir.name.removeprefix("quality-model-")
    known_methods, known_formats = available_methods(), available_formats()
    missing = [f"format `{f}`: not in this checkout's quantization registry" for f in formats if f not in known_formats]
    missing += [f"method `{m}`: not in this checkout" for m in methods if m not in known_methods]
    pairs = [(m, f) for m in methods if m in known_methods for f in formats if f in known_formats]
    pairs.append(("none", CONTROL))
    ids = quality_model.encode_text(_encoder(model_dir), (model_dir / quality_model.SPLIT_FILES["heldout"]).read_text(encoding="utf-8"))
    builds: dict[str, tuple[Path, Path]] = {}
    rows: list[dict[str, Any]] = []
    for method, fmt in pairs:
        label = f"{method}/{fmt}"
        weights = out / "weights" / f"{fmt}-{method}"
        record_path = out / "weights" / f"{fmt}-{method}.json"
        try:
            lib = compile_host(model_dir, out / "lib" / fmt, fmt)
            if weights.is_dir() and record_path.is_file() and not fresh:
                # A build measured by an earlier run of the same model: its weights and numbers are reused.
                record = json.loads(record_path.read_text(encoding="utf-8"))
                stats_c, rel = record["convert"], record["check_max_rel_error"]
            else:
                stats_c = convert(model_dir, weights, fmt, "rtn" if method == "none" else method)
                rel = build_check(model_dir, weights, lib, fmt, ids) if check else float("nan")
                record_path.write_text(json.dumps({"convert": stats_c, "check_max_rel_error": rel,
                                                   "commit": info["commit"]}, indent=2, default=str) + "\n",
                                       encoding="utf-8")
        except Exception as error:  # one failed build must not lose the others' numbers
            missing.append(f"`{method}` `{fmt}`: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
            _progress(f"{label}: FAILED {error}")
            continue
        _progress(f"{label}: converted in {stats_c['seconds']:.1f} s, {stats_c['bits_per_param']:.3f} bits/param, "
                  f"build check {rel:.2g}")
        builds[label] = (lib, weights)
        rows.append({"method": method, "format": fmt, "convert_seconds": stats_c["seconds"],
                     "bits_per_param": stats_c["bits_per_param"], "check_max_rel_error": rel,
                     "built_at": json.loads(record_path.read_text(encoding="utf-8")).get("commit", "?")})
    windows = quality_model.eval_windows(ids)
    all_windows = len(windows)
    if max_windows is not None and max_windows < all_windows:  # evenly spaced over the whole split
        windows = evenly_spaced(windows, max_windows)
    scored = score_builds(model_dir, builds, windows, finish_by)
    for row in rows:
        row.update(scored["builds"][f"{row['method']}/{row['format']}"])
    return {"machine": info, "model": stats, "model_dir": str(model_dir), "rows": rows, "missing": missing,
            "reference_perplexity": scored["reference_perplexity"], "tokens": scored["tokens"], "windows": scored["windows"],
            "all_windows": all_windows,
            "stand_in": stand_in_rtn_row(), "load_at_end": machine.load(),
            "total_seconds": time.perf_counter() - start}


def _utc_today(hh_mm: str) -> float:
    """``HH:MM`` UTC today (tomorrow if already past) as a ``time.time()``."""
    import datetime as dt

    try:
        hour, minute = (int(part) for part in hh_mm.split(":"))
        now = dt.datetime.now(dt.timezone.utc)
        at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    except ValueError as error:
        raise UserError(f"--finish-by {hh_mm!r}: give a UTC time as HH:MM ({error}).") from error
    return (at if at > now else at + dt.timedelta(days=1)).timestamp()


def _encoder(model_dir: Path):
    """The benchmark model's own SentencePiece tokenizer (quality_model trains it)."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(model_dir / "spiece.model")).encode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=None, help="comma-separated (default: every method of this checkout)")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--work", type=Path, default=quality_model.default_work())
    parser.add_argument("--text", type=Path, default=None, help=f"path of {quality_model.TEXT_NAME}")
    parser.add_argument("--max-windows", type=int, default=None,
                        help="score N held-out windows evenly spaced over the split (default: all)")
    parser.add_argument("--no-check", action="store_true", help="skip the per-build check against transformers")
    parser.add_argument("--fresh", action="store_true",
                        help="convert and check every build again (default: reuse builds an earlier run recorded)")
    parser.add_argument("--results", type=Path, default=None,
                        help="markdown output (default: benchmarks/QUALITY.md for a full run, else benchmarks/work/)")
    parser.add_argument("--finish-by", default=None, metavar="HH:MM",
                        help="UTC time to finish by: score as many evenly spaced windows as fit (default: no limit)")
    args = parser.parse_args(argv)
    methods = args.methods.split(",") if args.methods else available_methods()
    try:
        results = run(methods, args.formats.split(","), work=args.work, text=args.text,
                      max_windows=args.max_windows, check=not args.no_check, fresh=args.fresh,
                      finish_by=_utc_today(args.finish_by) if args.finish_by else None)
    except UserError as error:
        print(f"hf2mlc: {error}", file=sys.stderr)
        return 2
    full = args.methods is None and args.formats == ",".join(FORMATS)
    target = args.results or (QUALITY_MD if full else args.work / "QUALITY-partial.md")
    target.parent.mkdir(parents=True, exist_ok=True)
    (args.work / "quality-results.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    target.write_text(render(results), encoding="utf-8")
    _progress(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
