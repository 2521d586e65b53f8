"""The quality gate: verdicts from an evaluation report, the upload refusal, the card's model-index.

The card's front matter is parsed by huggingface_hub (the Hub's own reader), not by the code that wrote it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hf2mlc import gate
from hf2mlc.card import model_card
from hf2mlc.errors import UserError

#: An evaluation report shaped as hf2mlc.evaluate writes it (values from a demo q4f16_0 run).
REPORT = {
    "quantization": "q4f16_0",
    "text": {"name": "heldout.txt", "description": "the demo's held-out chats", "documents": 40, "tokens": 1068},
    "reference": {"name": "transformers float32", "perplexity": 1.4424},
    "build": {"name": "hf2mlc q4f16_0 (host build)", "perplexity": 1.4438},
    "top1_agreement": 0.986,
    "kl_mean": 0.0015,
    "kl_max": 0.21,
    "delta_perplexity": 0.0014,
}


def test_metrics_are_derived_from_the_report() -> None:
    measured = gate.metrics(REPORT)
    assert measured["ppl_increase_pct"] == pytest.approx((1.4438 / 1.4424 - 1) * 100)
    assert measured["ppl_increase_pct"] == pytest.approx(0.0970604, rel=1e-5)
    assert measured["mean_kl"] == 0.0015 and measured["top1"] == 0.986


def test_each_bound_passes_or_fails_on_its_own_metric() -> None:
    passing = gate.verdict({"max_ppl_increase_pct": 0.1, "max_mean_kl": 0.0015, "min_top1": 0.986}, REPORT)
    assert passing["passed"] is True  # a value equal to its bound passes
    assert [c["passed"] for c in passing["checks"]] == [True, True, True]
    for bound, value in (("max_ppl_increase_pct", 0.09), ("max_mean_kl", 0.0014), ("min_top1", 0.987)):
        result = gate.verdict({bound: value}, REPORT)
        assert result["passed"] is False
        [check] = result["checks"]
        assert check["bound_name"] == bound and check["bound"] == value and check["passed"] is False
    assert gate.verdict(None, REPORT)["passed"] is True and gate.verdict(None, REPORT)["checks"] == []


def test_failure_line_names_metric_value_and_bound() -> None:
    result = gate.verdict({"min_top1": 0.9999, "max_mean_kl": 0.1}, REPORT)
    line = gate.failure_line(result, "results/package/demo/iphone")
    assert line is not None and "\n" not in line
    assert "results/package/demo/iphone: fails its quality gate (top1 0.986 below min_top1 0.9999)" in line
    assert "max_mean_kl" not in line  # only the failed bound is named
    assert gate.failure_line(gate.verdict({"min_top1": 0.5}, REPORT), "x") is None


def test_require_pass_reads_the_bundle_verdict(tmp_path: Path) -> None:
    gate.write_verdict(tmp_path, gate.verdict({"max_ppl_increase_pct": 0.01}, REPORT))
    with pytest.raises(UserError, match=r"ppl_increase_pct 0\.0970\d* above max_ppl_increase_pct 0\.01"):
        gate.require_pass(tmp_path)
    gate.write_verdict(tmp_path, gate.verdict({"max_ppl_increase_pct": 1}, REPORT))
    gate.require_pass(tmp_path)
    (tmp_path / gate.VERDICT_FILE).unlink()
    with pytest.raises(UserError, match="quality-gate.json: missing"):
        gate.require_pass(tmp_path)


@pytest.mark.parametrize(
    ("report", "needle"),
    [
        ({k: v for k, v in REPORT.items() if k != "kl_mean"}, "has no 'kl_mean'"),
        ({**REPORT, "build": {"name": "x"}}, "has no 'build.perplexity'"),
        ({**REPORT, "top1_agreement": float("nan")}, "'top1_agreement' is nan"),
    ],
    ids=["no-kl", "no-build-ppl", "nan-top1"],
)
def test_a_report_without_a_gated_metric_is_one_clear_error(report: dict, needle: str) -> None:
    with pytest.raises(UserError, match="results/evaluate/demo/q4f16_0/report.json") as err:
        gate.verdict({"min_top1": 0.5}, report, "results/evaluate/demo/q4f16_0/report.json")
    assert needle in str(err.value)


def test_unknown_gate_key_is_refused() -> None:
    with pytest.raises(UserError, match=r"unknown key\(s\) \['max_kl'\]"):
        gate.verdict({"max_kl": 0.1}, REPORT)


def _card(verdict: dict | None) -> str:
    settings = {"source": "demo", "quantization": "q4f16_0", "method": "rtn", "device": "iphone",
                "model_id": "demo-q4f16_0-MLC", "name": "demo", "family": "line"}
    chat = {"conv_template": {"name": "line"}, "context_window_size": 768, "prefill_chunk_size": 256,
            "model_config": {"ffn_out_dtype": "float32"}, "hf2mlc": {"hf2mlc": "0"}}
    return model_card(settings=settings, chat_config=chat, evaluation=REPORT, source_metadata={"license": "apache-2.0"},
                      lib_files=["libmodel_iphone.a"], model_lib="demo", estimated_vram=1, gate_verdict=verdict)


def test_card_model_index_parses_with_huggingface_hub() -> None:
    from huggingface_hub import ModelCard

    failing = gate.verdict({"min_top1": 0.9999, "max_mean_kl": 0.1}, REPORT)
    text = _card(failing)
    card = ModelCard(text)  # the Hub's parser: raises on invalid front matter or model-index
    assert card.data.model_name == "demo-q4f16_0-MLC"
    results = {(r.metric_type, r.metric_name): r for r in card.data.eval_results}
    assert results[("perplexity", "Perplexity (this build)")].metric_value == 1.4438
    assert results[("perplexity", "Perplexity (float32 reference)")].metric_value == 1.4424
    assert results[("kl_divergence", "Mean KL divergence from float32 (nats/token)")].metric_value == 0.0015
    assert results[("top1_agreement", "Top-1 agreement with float32")].metric_value == 0.986
    verdict = results[("quality_gate", "hf2mlc quality gate")]
    assert verdict.metric_value == "fail" and verdict.metric_args == {"min_top1": 0.9999, "max_mean_kl": 0.1}
    assert {r.task_type for r in card.data.eval_results} == {"text-generation"}
    assert {r.dataset_name for r in card.data.eval_results} == {"heldout.txt"}
    assert all(r.verified is False for r in card.data.eval_results)
    # Round trip through the Hub's writer keeps the results (what the Hub shows is what we wrote).
    again = ModelCard(card.content)
    assert len(again.data.eval_results) == len(card.data.eval_results) == 6
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["library_name"] == "mlc-llm" and front["model-index"][0]["name"] == "demo-q4f16_0-MLC"
    assert "| top1 | 0.986 | ≥ 0.9999 | **fail** |" in text and "| mean_kl | 0.0015 | ≤ 0.1 | pass |" in text


def test_card_without_gate_has_no_verdict_metric() -> None:
    from huggingface_hub import ModelCard

    card = ModelCard(_card(gate.verdict(None, REPORT)))
    assert "quality_gate" not in {r.metric_type for r in card.data.eval_results}
    assert len(card.data.eval_results) == 5
    assert "No quality gate is configured for this device." in card.text


def test_verdict_file_is_plain_json(tmp_path: Path) -> None:
    result = gate.verdict({"min_top1": 0.9}, REPORT)
    gate.write_verdict(tmp_path, result)
    assert json.loads((tmp_path / gate.VERDICT_FILE).read_text(encoding="utf-8")) == result
