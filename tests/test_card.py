"""The model card against the Hub's conventions for converted models (mlc-ai's repos) and what they lack."""

from __future__ import annotations

import json
import re

import yaml

from hf2mlc.card import model_card

SETTINGS = {
    "device": "iphone",
    "model_id": "japanese-large-lm-3.6b-instruction-sft-q4f16_1-MLC",
    "name": "japanese-large-lm-3.6b-instruction-sft",
    "source": "hf://line-corporation/japanese-large-lm-3.6b-instruction-sft@main",
    "family": "line",
    "quantization": "q4f16_1",
    "method": "gptq",
    "context_window_size": 768,
    "prefill_chunk_size": 256,
}
CHAT = {
    "conv_template": {"name": "line", "roles": {"user": "ユーザー", "assistant": "システム"}},
    "context_window_size": 768,
    "prefill_chunk_size": 256,
    "model_config": {"ffn_out_dtype": "float16"},
    "hf2mlc": {"hf2mlc": "0.1.0", "apache-tvm": "0.27.0.post1"},
}
EVALUATION = {
    "reference": {"name": "transformers float32", "perplexity": 9.8765},
    "build": {"name": "q4f16_1 host build", "perplexity": 10.1234},
    "delta_perplexity": 0.2469,
    "top1_agreement": 0.9312,
    "kl_mean": 0.0421,
    "text": {"tokens": 4096, "name": "eval_ja.txt", "description": "Japanese prose"},
}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _card(**overrides) -> tuple[dict, str]:
    kwargs = {
        "settings": SETTINGS,
        "chat_config": CHAT,
        "evaluation": EVALUATION,
        "source_metadata": {"license": "apache-2.0", "language": "ja"},
        "lib_files": ["libmodel_iphone.a", "lib.tar"],
        "model_lib": "japanese_large_lm_3_6b_instruction_sft_q4f16_1_MLC_iphone",
        "estimated_vram": 2_500_000_000,
        "source_commit": COMMIT,
        **overrides,
    }
    text = model_card(**kwargs)
    match = re.match(r"---\n(.*?)\n---\n", text, flags=re.S)
    assert match, text[:200]
    return yaml.safe_load(match.group(1)), text


def test_front_matter_follows_mlc_ai_and_adds_what_they_lack() -> None:
    front, _text = _card()
    assert front["library_name"] == "mlc-llm"
    assert front["base_model"] == "line-corporation/japanese-large-lm-3.6b-instruction-sft"
    assert front["base_model_relation"] == "quantized"
    assert front["tags"][:2] == ["mlc-llm", "web-llm"] and "q4f16_1" in front["tags"]
    assert front["license"] == "apache-2.0" and front["language"] == ["ja"]
    assert front["pipeline_tag"] == "text-generation"
    unmeasured, _ = _card(evaluation=None)
    assert "model-index" not in unmeasured


def test_card_pins_the_commit_and_holds_the_exact_config_and_quality() -> None:
    _front, text = _card()
    assert f"commit `{COMMIT}`" in text
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)\n```", text, flags=re.S)]
    build = blocks[-1]
    assert {k: build[k] for k in SETTINGS} == SETTINGS
    assert build["source_commit"] == COMMIT and build["ffn_out_dtype"] == "float16"
    row = next(line for line in text.splitlines() if line.startswith("| q4f16_1 host build"))
    assert [cell.strip() for cell in row.strip("|").split("|")] == ["q4f16_1 host build", "10.123", "+0.247", "93.12%", "0.0421"]
    assert "4096 tokens of eval_ja.txt" in text


def test_demo_source_has_no_base_model_and_model_index_goes_last() -> None:
    front, text = _card(settings={**SETTINGS, "source": "demo"}, source_commit=None)
    assert "base_model" not in front and "base_model_relation" not in front
    assert list(front)[-1] == "model-index"
    (entry,) = front["model-index"]
    assert entry["name"] == SETTINGS["model_id"]
    metrics = {(m["type"], m["name"]): m["value"] for m in entry["results"][0]["metrics"]}
    assert metrics[("perplexity", "Perplexity (this build)")] == 10.1234
    assert metrics[("top1_agreement", "Top-1 agreement with float32")] == 0.9312
    assert entry["results"][0]["dataset"]["args"] == {"tokens": 4096}
    assert "commit `" not in text
