"""The quality gate: whether a bundle's measured quality is good enough to publish.

A device's ``quality_gate`` (config/config.yaml, beside ``quantization:``) bounds what quantization may
cost on the evaluation text: ``max_ppl_increase_pct`` (perplexity of the build over the float32
reference, in percent), ``max_mean_kl`` (mean KL divergence reference → build, nats per token) and
``min_top1`` (fraction of positions where both pick the same top token).  The package stage writes the
verdict into the bundle whatever it is — a failing bundle is still worth inspecting — and the upload stage
refuses a failing one, so a build that lost too much never reaches the Hub.

The verdict is computed from the evaluation stage's ``report.json`` (:func:`hf2mlc.evaluate.evaluate_build`),
reading these keys and nothing else (:data:`REPORT_KEYS`): ``reference.perplexity`` and
``build.perplexity`` (the increase is derived from both, so it does not depend on how the report rounds
a delta; the same number as the report's paired ``delta_perplexity_pct``, which older reports lack),
``kl_mean`` and ``top1_agreement``.  Since the streaming reference, ``kl_mean`` is KL over the reference's
top-k tokens with the rest lumped, a lower bound of the exact KL; the report's ``kl_mean_upper_bound``
bounds it from above, so a gate on ``max_mean_kl`` is as strict as the report is exact.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import UserError

#: The bundle file that holds the verdict (also copied into the package manifest as ``quality_gate``).
VERDICT_FILE = "quality-gate.json"

#: Each bound of ``quality_gate``: the metric it bounds and whether the bound is a maximum or a minimum.
BOUNDS: dict[str, tuple[str, str]] = {
    "max_ppl_increase_pct": ("ppl_increase_pct", "max"),
    "max_mean_kl": ("mean_kl", "max"),
    "min_top1": ("top1", "min"),
}

#: Where each metric comes from in the evaluation report (dotted paths).
REPORT_KEYS: dict[str, tuple[str, ...]] = {
    "ppl_increase_pct": ("reference.perplexity", "build.perplexity"),
    "mean_kl": ("kl_mean",),
    "top1": ("top1_agreement",),
}


def _lookup(report: Mapping[str, Any], dotted: str, where: str) -> float:
    value: Any = report
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise UserError(
                f"{where}: has no {dotted!r}, which the quality gate reads; rerun the evaluate stage "
                "(an older hf2mlc may have written this report)."
            )
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: {dotted!r} is {value!r}, not a finite number; rerun the evaluate stage.")
    return float(value)


def metrics(report: Mapping[str, Any], where: str = "report.json") -> dict[str, float]:
    """The gated metrics of one evaluation report."""
    reference = _lookup(report, "reference.perplexity", where)
    build = _lookup(report, "build.perplexity", where)
    return {
        "ppl_increase_pct": (build / reference - 1.0) * 100.0,
        "mean_kl": _lookup(report, "kl_mean", where),
        "top1": _lookup(report, "top1_agreement", where),
    }


def verdict(gate: Mapping[str, float] | None, report: Mapping[str, Any], where: str = "report.json") -> dict[str, Any]:
    """Pass/fail of each configured bound, with the measured value; ``passed`` is true when all pass.

    No gate (or an empty one) passes with no checks: the verdict then says nothing was required.
    """
    gate = dict(gate or {})
    unknown = sorted(set(gate) - set(BOUNDS))
    if unknown:
        raise UserError(f"quality_gate: unknown key(s) {unknown}; use {sorted(BOUNDS)}.")
    measured = metrics(report, where)
    checks = []
    for bound_name in sorted(gate):
        metric, kind = BOUNDS[bound_name]
        bound, value = float(gate[bound_name]), measured[metric]
        passed = value <= bound if kind == "max" else value >= bound
        checks.append({"bound_name": bound_name, "metric": metric, "value": value, "bound": bound,
                       "kind": kind, "passed": passed})
    return {
        "gate": gate,
        "metrics": measured,
        "report_keys": {metric: list(keys) for metric, keys in REPORT_KEYS.items()},
        "checks": checks,
        "passed": all(check["passed"] for check in checks),
    }


def failure_line(result: Mapping[str, Any], bundle: str) -> str | None:
    """One line naming each failed metric, its value and bound; None when the verdict passed."""
    failed = [c for c in result["checks"] if not c["passed"]]
    if not failed:
        return None
    parts = [
        f"{c['metric']} {c['value']:.6g} {'above' if c['kind'] == 'max' else 'below'} {c['bound_name']} {c['bound']:g}"
        for c in failed
    ]
    return (
        f"{bundle}: fails its quality gate ({'; '.join(parts)}); not uploading. Use a better quantization or "
        "method for this device, or relax quality_gate in config/config.yaml."
    )


def write_verdict(directory: Path, result: Mapping[str, Any]) -> None:
    from .manifest import write_json

    write_json(Path(directory) / VERDICT_FILE, dict(result))


def read_verdict(package: Path) -> dict[str, Any]:
    path = Path(package) / VERDICT_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise UserError(f"{path}: missing; rerun the package stage (an older hf2mlc made this bundle).") from err


def require_pass(package: Path) -> None:
    """Raise the one-line refusal if the bundle in ``package`` failed its gate."""
    line = failure_line(read_verdict(package), str(package))
    if line:
        raise UserError(line)


def model_index(model_id: str, evaluation: Mapping[str, Any], result: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Hugging Face ``model-index`` results: the evaluation's metrics and, when gated, the gate's verdict.

    One result (task text-generation, the evaluation text as the dataset); metrics are unverified (the
    Hub verifies only its own evaluations).  The gate's verdict is a metric of type ``quality_gate``
    whose value is ``pass`` or ``fail`` and whose args are the bounds.
    """
    text = evaluation["text"]
    measured = metrics(evaluation)
    entries: list[dict[str, Any]] = [
        {"type": "perplexity", "name": "Perplexity (this build)", "value": round(float(evaluation["build"]["perplexity"]), 4)},
        {"type": "perplexity", "name": "Perplexity (float32 reference)",
         "value": round(float(evaluation["reference"]["perplexity"]), 4)},
        {"type": "perplexity_increase_pct", "name": "Perplexity increase over float32 (%)",
         "value": round(measured["ppl_increase_pct"], 4)},
        {"type": "kl_divergence", "name": "Mean KL divergence from float32 (nats/token)", "value": round(measured["mean_kl"], 6)},
        {"type": "top1_agreement", "name": "Top-1 agreement with float32", "value": round(measured["top1"], 4)},
    ]
    if result is not None and result.get("checks"):
        entries.append({"type": "quality_gate", "name": "hf2mlc quality gate",
                        "value": "pass" if result["passed"] else "fail", "args": dict(result["gate"])})
    for entry in entries:
        entry["verified"] = False
    return [{
        "name": model_id,
        "results": [{
            "task": {"type": "text-generation", "name": "Text Generation"},
            "dataset": {"type": "text", "name": str(text["name"]), "split": "evaluation",
                        "args": {"tokens": int(text["tokens"])}},
            "metrics": entries,
        }],
    }]


def card_section(result: Mapping[str, Any] | None) -> str:
    """The model card's gate paragraph: the verdict and one row per bound."""
    if result is None or not result.get("checks"):
        return "No quality gate is configured for this device.\n"
    rows = ["| metric | value | bound | verdict |", "| --- | ---: | ---: | --- |"]
    for c in result["checks"]:
        rows.append(f"| {c['metric']} | {c['value']:.6g} | {'≤' if c['kind'] == 'max' else '≥'} {c['bound']:g} | "
                    f"{'pass' if c['passed'] else '**fail**'} |")
    verdict_word = "**passed**" if result["passed"] else "**failed** (hf2mlc refuses to upload it)"
    return f"This bundle {verdict_word} its quality gate.\n\n" + "\n".join(rows) + "\n"
