"""The bundle's JSON files and card against MLC LLM's published formats (shared/reference: mlc-format.md:
MLCChatConfig, Conversation, the app and package configs), and the values in them against the library and
weights they ship: model_lib for both devices, context window and prefill chunk from the library's own
metadata, the VRAM estimate recomputed from config.json and the shard files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hf2mlc.spec import TargetSpec, model_lib_name

#: MLCChatConfig's fields (python/mlc_llm/protocol/mlc_chat_config.py).
MLC_CHAT_CONFIG_KEYS = {
    "version", "model_type", "quantization", "model_config", "vocab_size", "context_window_size",
    "sliding_window_size", "prefill_chunk_size", "attention_sink_size", "tensor_parallel_shards",
    "pipeline_parallel_stages", "active_vocab_size", "temperature", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "top_p", "tokenizer_files", "tokenizer_info", "conv_template", "pad_token_id",
    "bos_token_id", "eos_token_id", "model_task",
}  # fmt: skip
#: Keys hf2mlc adds that MLC ignores or accepts empty.
EXTRA_CHAT_KEYS = {"hf2mlc", "embedding_metadata"}
#: Conversation's fields (python/mlc_llm/protocol/conversation_protocol.py).
CONVERSATION_KEYS = {
    "name", "system_template", "system_message", "system_prefix_token_ids", "add_role_after_system_message",
    "roles", "role_templates", "messages", "seps", "role_content_sep", "role_empty_sep", "stop_str",
    "stop_token_ids",
}  # fmt: skip
#: Conversation's function-calling and reasoning fields (newer than the list above; families writes MLC's defaults).
CONVERSATION_EXTRA_KEYS = {"function_string", "use_function_calling", "strip_reasoning_in_history"}
TOKENIZER_INFO_KEYS = {"token_postproc_method", "prepend_space_in_encode", "strip_space_in_decode"}
APP_MODEL_KEYS = {"model_id", "model_lib", "model_path", "estimated_vram_bytes"}
PACKAGE_MODEL_KEYS = {"model", "model_id", "estimated_vram_bytes", "bundle_weight", "overrides", "model_lib"}
CONFIG = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- fast: the naming rules


@pytest.mark.parametrize(
    ("target", "model_lib"),
    [
        # MLC's iOS engine finds a system library by its prefix: '-' and '.' become '_', no trailing '_'.
        ("iphone", "japanese-large-lm-3_6b-q4f16_0-MLC-iphone".replace("-", "_")),
        ("mac", "japanese-large-lm-3_6b-q4f16_0-MLC-mac"),
    ],
)
def test_model_lib_of_each_device(target: str, model_lib: str) -> None:
    lib_name = model_lib_name("japanese-large-lm-3.6b", "q4f16_0", target)
    spec = TargetSpec.create(target=target, quantization="q4f16_0", lib_name=lib_name, context_window_size=768,
                             prefill_chunk_size=256)
    assert spec.model_lib == model_lib
    assert spec.system_lib_prefix == (model_lib + "_" if target == "iphone" else None)


# ---------------------------------------------------------------- slow: the demo's bundles


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def bundles(demo_workflow: dict) -> dict:
    results = demo_workflow["work"] / "results"
    out = {}
    for device in ("iphone", "mac"):
        package = results / "package" / "demo" / device
        (model_dir,) = [p for p in (package / "bundle").iterdir() if p.is_dir()]
        quant = CONFIG["defaults"]["targets"][device]["quantization"]
        out[device] = {
            "package": package,
            "model_dir": model_dir,
            "quant": quant,
            "lib_info": _json(results / "compile" / "demo" / f"{device}-{quant}" / "lib-info.json"),
            "weights": results / "weights" / "demo" / quant,
            "config": _json(results / "download" / "demo" / "config.json"),
        }
    return out


@pytest.mark.slow
@pytest.mark.parametrize("device", ["iphone", "mac"])
def test_chat_config_has_mlc_fields_and_the_library_values(bundles: dict, device: str) -> None:
    b = bundles[device]
    chat = _json(b["model_dir"] / "mlc-chat-config.json")
    assert MLC_CHAT_CONFIG_KEYS <= set(chat) and set(chat) - MLC_CHAT_CONFIG_KEYS <= EXTRA_CHAT_KEYS
    assert CONVERSATION_KEYS <= set(chat["conv_template"]) <= CONVERSATION_KEYS | CONVERSATION_EXTRA_KEYS
    assert set(chat["tokenizer_info"]) == TOKENIZER_INFO_KEYS
    assert all((b["model_dir"] / name).is_file() for name in chat["tokenizer_files"])
    library = b["lib_info"]["metadata"]
    target = CONFIG["defaults"]["targets"][device]
    assert chat["quantization"] == library["quantization"] == b["quant"]
    assert chat["context_window_size"] == library["context_window_size"] == target["context_window_size"]
    assert chat["prefill_chunk_size"] == library["prefill_chunk_size"] == target["prefill_chunk_size"]
    assert chat["model_config"]["context_window_size"] == chat["context_window_size"]
    assert chat["model_config"]["prefill_chunk_size"] == chat["prefill_chunk_size"]
    assert chat["vocab_size"] == b["config"]["vocab_size"]
    assert chat["model_type"] == "gpt_neox" and chat["model_task"] == "chat"


@pytest.mark.slow
@pytest.mark.parametrize("device", ["iphone", "mac"])
def test_app_and_package_configs_name_the_shipped_library(bundles: dict, device: str) -> None:
    b = bundles[device]
    (entry,) = _json(b["package"] / "bundle" / "mlc-app-config.json")["model_list"]
    assert set(entry) == APP_MODEL_KEYS
    model_id = f"{CONFIG['models'][0]['name']}-{b['quant']}-MLC"
    assert entry["model_id"] == entry["model_path"] == model_id == b["model_dir"].name
    lib_name = f"{model_id}-{device}"
    # The Mac's model_lib is its library's name (before: the model id, from a key lib-info.json lacks).
    assert entry["model_lib"] == (lib_name.replace("-", "_") if device == "iphone" else lib_name)
    assert entry["model_lib"] == b["lib_info"]["model_lib"]
    if device == "iphone":
        assert b["lib_info"]["system_lib_prefix"] == entry["model_lib"] + "_"
    package = _json(b["package"] / "mlc-package-config.json")
    assert package["device"] == device
    (pkg_entry,) = package["model_list"]
    assert set(pkg_entry) == PACKAGE_MODEL_KEYS
    assert pkg_entry["model_lib"] == entry["model_lib"] and pkg_entry["estimated_vram_bytes"] == entry["estimated_vram_bytes"]
    assert pkg_entry["overrides"] == {
        "context_window_size": b["lib_info"]["metadata"]["context_window_size"],
        "prefill_chunk_size": b["lib_info"]["metadata"]["prefill_chunk_size"],
    }
    old = _json(b["package"] / "app-config.json")
    assert old["model_libs"] == [entry["model_lib"]] and old["model_list"][0]["local_id"] == model_id


@pytest.mark.slow
@pytest.mark.parametrize("device", ["iphone", "mac"])
def test_vram_estimate_from_the_shards_and_config(bundles: dict, device: str) -> None:
    """Parameters (the shard files' bytes) + a float16 KV cache of the whole window + float32 activations
    of one prefill chunk + two float32 logit rows."""
    b = bundles[device]
    cfg, library = b["config"], b["lib_info"]["metadata"]
    params = sum(p.stat().st_size for p in b["weights"].glob("params_shard_*.bin"))
    window, chunk = library["context_window_size"], library["prefill_chunk_size"]
    kv = 2 * cfg["num_hidden_layers"] * window * cfg["hidden_size"] * 2
    activations = chunk * (4 * cfg["hidden_size"] + cfg["intermediate_size"]) * 4
    want = params + kv + activations + 2 * 4 * cfg["vocab_size"]
    (entry,) = _json(b["package"] / "bundle" / "mlc-app-config.json")["model_list"]
    assert entry["estimated_vram_bytes"] == want


@pytest.mark.slow
@pytest.mark.parametrize("device", ["iphone", "mac"])
def test_card_front_matter_and_build_settings(bundles: dict, device: str) -> None:
    b = bundles[device]
    card = (b["package"] / "README.md").read_text(encoding="utf-8")
    front = yaml.safe_load(card.split("---", 2)[1])
    assert front["library_name"] == "mlc-llm" and front["pipeline_tag"] == "text-generation"
    assert front["quantization"] == b["quant"] and {device, b["quant"], "mlc-llm"} <= set(front["tags"])
    settings = json.loads(card.split("## Build settings\n", 1)[1].split("```json\n", 1)[1].split("\n```", 1)[0])
    (entry,) = _json(b["package"] / "bundle" / "mlc-app-config.json")["model_list"]
    chat = _json(b["model_dir"] / "mlc-chat-config.json")
    assert settings["model_lib"] == entry["model_lib"]
    assert settings["estimated_vram_bytes"] == entry["estimated_vram_bytes"]
    assert settings["context_window_size"] == chat["context_window_size"]
    assert settings["prefill_chunk_size"] == chat["prefill_chunk_size"]
    assert settings["ffn_out_dtype"] == chat["model_config"]["ffn_out_dtype"] == b["lib_info"]["spec"]["ffn_out_dtype"]
    assert f"# {entry['model_id']}" in card
    for name in sorted(p.name for p in (b["package"] / "lib").iterdir()):
        assert f"`lib/{name}`" in card
