"""What quantization cost: perplexity with its interval, KL, top-1 agreement and greedy answers of a host
build against the stored float32 reference of the original checkpoint (:mod:`hf2mlc.reference_cache`), on
the model's evaluation text.

Whether the compiled model is *right* is a different question, answered by :mod:`hf2mlc.check`.
"""

from __future__ import annotations

import gc
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .layout import EVALUATION_MARKDOWN, EVALUATION_REPORT

log = logging.getLogger(__name__)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------- statistics

#: Tokens per block of the batch-means standard error (neighbouring tokens' losses are correlated).
CI_BLOCK_TOKENS = 64
#: Rows of build logits turned into log-probabilities at once ([rows, vocab] float64: 105 MB at 51,200).
KL_ROWS = 256


#: Student's t 97.5 % quantiles where the expansion below is poor.
_T_975_SMALL = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764}


def _t_quantile_975(dof: int) -> float:
    """Student's t 97.5 % quantile (tabulated below 5, else the Cornish–Fisher expansion around the normal's: < 0.1 % off)."""
    if dof in _T_975_SMALL:
        return _T_975_SMALL[dof]
    z = 1.959963984540054
    return (
        z
        + (z**3 + z) / (4 * dof)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * dof**3)
    )


def mean_interval(values: np.ndarray, *, block: int = CI_BLOCK_TOKENS) -> dict[str, float]:
    """Mean and 95 % interval of per-token values by batch means: the standard error of the means of
    consecutive ``block``-token blocks (Student's t over the blocks), which unlike the per-token
    standard error does not pretend neighbouring tokens are independent."""
    values = np.asarray(values, dtype=np.float64)
    blocks = max(2, len(values) // block)
    means = np.array([chunk.mean() for chunk in np.array_split(values, blocks)])
    mean = float(values.mean())
    half = _t_quantile_975(blocks - 1) * float(means.std(ddof=1)) / math.sqrt(blocks)
    return {"mean": mean, "low": mean - half, "high": mean + half, "blocks": blocks}


def kl_bounds(
    logq: np.ndarray, top_ids: np.ndarray, top_logits: np.ndarray, lse: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower, upper, tail mass) of KL(reference ‖ build) per position from the stored top-k reference.

    ``logq`` [n, vocab] is the build's full log-distribution.  Over the reference's top-k the KL terms
    are exact.  The reference's remaining mass ``T_p`` is spread over the other tokens in an unknown way,
    each at most the k-th largest probability ``c``.  *Lower*: the tail as one outcome,
    ``T_p·log(T_p/T_q)`` (log-sum inequality; exact if the tails have the same shape).  *Upper*: the
    largest value any admissible tail can give, which (the term is convex in the tail) puts ``c`` on
    the tokens the build finds least likely first.
    """
    logp_top = top_logits.astype(np.float64) - lse[:, None]
    p_top = np.exp(logp_top)
    logq_top = np.take_along_axis(logq, top_ids.astype(np.int64), -1)
    kl_top = (p_top * (logp_top - logq_top)).sum(-1)
    tail_p = np.clip(1.0 - p_top.sum(-1), 0.0, 1.0)
    tail_q = np.clip(1.0 - np.exp(logq_top).sum(-1), 1e-300, 1.0)
    k, vocab = top_ids.shape[1], logq.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        lower = kl_top + np.where(tail_p > 0, tail_p * np.log(tail_p / tail_q), 0.0)
    if k >= vocab:
        return lower, lower.copy(), tail_p
    rest = logq.copy()
    np.put_along_axis(rest, top_ids.astype(np.int64), np.inf, -1)
    rest.sort(axis=-1)
    rest = rest[:, : vocab - k]  # the build's tail log-probabilities, least likely first
    cap = np.exp(logp_top[:, -1])
    full = np.minimum(np.floor(tail_p / cap).astype(np.int64), vocab - k - 1)
    partial = tail_p - full * cap
    cumulative = np.concatenate([np.zeros((len(rest), 1)), np.cumsum(rest, -1)], -1)
    rows = np.arange(len(rest))
    upper_tail = cap * (full * np.log(cap) - cumulative[rows, full])
    with np.errstate(divide="ignore", invalid="ignore"):
        upper_tail += np.where(partial > 0, partial * (np.log(partial) - rest[rows, full]), 0.0)
    return lower, kl_top + upper_tail, tail_p


# ---------------------------------------------------------------- the evaluation


def _build_scores(engine, reference) -> dict[str, np.ndarray]:
    """Per-position NLL, argmax and KL bounds of the build on the reference's rows."""
    parts: dict[str, list[np.ndarray]] = {"nll": [], "argmax": [], "kl_low": [], "kl_high": [], "tail": []}
    rows = reference.rows()
    for index, (row, start) in enumerate(zip(rows, reference.offsets[:-1])):
        engine.reset()
        logits = engine.logits_all(row.tolist())
        for a in range(0, len(row), KL_ROWS):
            b = min(len(row), a + KL_ROWS)
            g = slice(int(start) + a, int(start) + b)
            logq = _log_softmax(logits[a:b])
            parts["nll"].append(-logq[np.arange(b - a), reference.targets[g]])
            parts["argmax"].append(logits[a:b].argmax(-1))
            low, high, tail = kl_bounds(logq, reference.top_ids[g], reference.top_logits[g], reference.lse[g])
            parts["kl_low"].append(low)
            parts["kl_high"].append(high)
            parts["tail"].append(tail)
        if (index + 1) % 10 == 0 or index + 1 == len(rows):
            log.info("evaluate: %d/%d rows", index + 1, len(rows))
    return {key: np.concatenate(value) for key, value in parts.items()}


def _perplexity(interval: dict[str, float]) -> dict[str, float]:
    return {"value": math.exp(interval["mean"]), "ci95": [math.exp(interval["low"]), math.exp(interval["high"])]}


def _answers(engine, reference, decode) -> list[dict[str, Any]]:
    """The build's greedy answers to the reference's prompts, beside the reference's."""
    from .evaluation_text import answer_text

    out = []
    for item in reference.answers:
        ids = engine.generate(item["prompt_ids"], item["answer_tokens"], temperature=0.0, stop_token_ids=item["stop_token_ids"])
        out.append({
            "template": item["template"], "message": item["message"], "prompt": item["prompt"],
            "reference": item["answer"], "build": answer_text(ids, item, decode),
            "same_tokens": ids == item["answer_ids"],
        })
    return out


def evaluate_build(
    model_dir: Path, weights_dir: Path, lib_path: Path, quantization: str, reference_dir: Path, answers_dir: Path,
    out_dir: Path,
) -> dict[str, Any]:
    """Perplexity (with interval), KL, top-1 agreement and greedy answers of the host build against the
    stored float32 reference; writes report.json + report.md into ``out_dir``."""
    from .evaluation_text import load_tokenizer
    from .reference_cache import read_reference
    from .runtime import Engine

    reference = read_reference(reference_dir, answers_dir)
    engine = Engine(lib_path, weights_dir)
    longest = int(np.diff(reference.offsets).max())
    if longest > engine.context_window_size:
        raise UserError(
            f"{reference_dir}: the reference has rows of {longest} tokens, longer than {lib_path.name}'s context "
            f"window of {engine.context_window_size}; rebuild the reference with the host context_window_size."
        )
    scores = _build_scores(engine, reference)
    answers = _answers(engine, reference, load_tokenizer(Path(model_dir)).decode)
    del engine
    gc.collect()

    nll_ref = -reference.target_logprob
    ref_ppl = _perplexity(mean_interval(nll_ref))
    build_ppl = _perplexity(mean_interval(scores["nll"]))
    diff = mean_interval(scores["nll"] - nll_ref)  # paired: the same tokens, so far tighter than either alone
    kl = scores["kl_low"]
    text = reference.summary["text"]
    report: dict[str, Any] = {
        "quantization": quantization,
        "text": {"name": text["name"], "description": text["description"], "documents": text["rows"],
                 "tokens": text["tokens"], "sha256": text["sha256"]},
        "reference": {"name": "hf2mlc streaming float32 reference", "perplexity": ref_ppl["value"],
                      "perplexity_ci95": ref_ppl["ci95"], "model_digest": reference.summary["model"]["digest"]},
        "build": {"name": f"hf2mlc {quantization} (host build)", "perplexity": build_ppl["value"],
                  "perplexity_ci95": build_ppl["ci95"]},
        "delta_perplexity": build_ppl["value"] - ref_ppl["value"],
        "delta_perplexity_pct": 100 * math.expm1(diff["mean"]),
        "delta_perplexity_pct_ci95": [100 * math.expm1(diff["low"]), 100 * math.expm1(diff["high"])],
        "top1_agreement": float(np.mean(scores["argmax"] == reference.top_ids[:, 0])),
        "kl_mean": float(kl.mean()),
        "kl_p99": float(np.quantile(kl, 0.99)),
        "kl_max": float(kl.max()),
        "kl_mean_upper_bound": float(scores["kl_high"].mean()),
        "reference_tail_mass_mean": float(scores["tail"].mean()),
        "method": {
            "interval": f"95 % Student-t interval over {diff['blocks']} blocks of ~{CI_BLOCK_TOKENS} consecutive "
                        "tokens (batch means); Δ perplexity is paired per token",
            "kl": f"KL(reference ‖ build) in nats over the reference's top {reference.summary['top_k']} tokens, "
                  "the rest as one outcome: a lower bound of the exact KL (kl_mean_upper_bound bounds it above)",
        },
        "answers": answers,
    }
    report = json.loads(json.dumps(report), parse_float=lambda s: round(float(s), 6))
    out_dir = Path(out_dir)
    (out_dir / EVALUATION_REPORT).write_text(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / EVALUATION_MARKDOWN).write_text(_markdown(report), encoding="utf-8")
    return report


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "⏎") or "(empty)"


def _markdown(report: dict[str, Any]) -> str:
    ref, build, text = report["reference"], report["build"], report["text"]
    lines = [
        f"# Quality of the {report['quantization']} build",
        "",
        f"{text['tokens']} tokens in {text['documents']} rows of {text['name']} ({text['description']}).",
        "",
        "| model | perplexity (95 % CI) | Δ perplexity (95 % CI) | top-1 agreement | mean KL | p99 KL |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| {ref['name']} | {ref['perplexity']:.4f} ({ref['perplexity_ci95'][0]:.4f}–{ref['perplexity_ci95'][1]:.4f}) "
        "| – | – | – | – |",
        f"| {build['name']} | {build['perplexity']:.4f} ({build['perplexity_ci95'][0]:.4f}–{build['perplexity_ci95'][1]:.4f}) "
        f"| {report['delta_perplexity_pct']:+.2f} % ({report['delta_perplexity_pct_ci95'][0]:+.2f} to "
        f"{report['delta_perplexity_pct_ci95'][1]:+.2f} %) | {report['top1_agreement']:.2%} | {report['kl_mean']:.5f} "
        f"| {report['kl_p99']:.5f} |",
        "",
        f"Intervals: {report['method']['interval']}. KL: {report['method']['kl']}; upper bound of the mean "
        f"{report['kl_mean_upper_bound']:.5f}, reference mass outside the stored tokens {report['reference_tail_mass_mean']:.2e}.",
        "",
        "## Greedy answers",
        "",
        "The same prompts under the model's family template and under `seed-compat` (the 2023 write-up's). "
        "Where the reference itself answers poorly under one template only, that template is wrong; where the "
        "build departs from the reference under the same template, quantization is.",
        "",
        "| template | prompt | reference | build | same tokens |",
        "| --- | --- | --- | --- | :---: |",
    ]
    for a in report["answers"]:
        lines.append(
            f"| {a['template']} | {_cell(a['message'])} | {_cell(a['reference'])} | {_cell(a['build'])} "
            f"| {'yes' if a['same_tokens'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"
