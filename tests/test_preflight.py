"""Fail fast, one line (hf2mlc.preflight, model config validation): bad settings and checkpoints are refused
before anything is allocated or built.  Parameter counts are checked against numpy's own arithmetic on
tensors written with safetensors, not against the code under test."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from hf2mlc.errors import UserError
from hf2mlc.families import load_family
from hf2mlc.model.gpt_neox.config import GPTNeoXConfig
from hf2mlc.preflight import GiB, check_checkpoint, check_memory, check_model_dir, check_workflow
from hf2mlc.resources import mem_mb
from test_convert import _hf_state

REPO = Path(__file__).resolve().parents[1]
CONFIG = {
    "model_type": "gpt_neox", "hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 2,
    "intermediate_size": 64, "vocab_size": 96, "rotary_pct": 1.0, "rotary_emb_base": 10000.0,
    "use_parallel_residual": False, "tie_word_embeddings": False, "layer_norm_eps": 1e-5,
    "max_position_embeddings": 128, "bos_token_id": 1, "eos_token_id": 2,
}


def write_checkpoint(directory: Path, config: dict, *, layers: int = 2, tied: bool = False) -> int:
    """A GPT-NeoX checkpoint with Hugging Face's tensor names; returns its parameter count (numpy's)."""
    sizes = {k: CONFIG[k] for k in ("hidden_size", "intermediate_size", "vocab_size")}
    tensors = _hf_state({**sizes, "num_hidden_layers": layers}, tied, seed=0)
    count = sum(t.size for t in tensors.values())
    for n in range(layers):  # the causal-mask buffer older checkpoints carry: not a parameter
        tensors[f"gpt_neox.layers.{n}.attention.bias"] = np.ones((1, 1, 8, 8), dtype=np.float16)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config))
    return count


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("hidden_size", "abc", "hidden_size is 'abc', but it must be a whole number"),
        ("hidden_size", None, "hidden_size is None"),
        ("num_attention_heads", 0, "num_attention_heads is 0, but it must be a whole number of at least 1"),
        ("rotary_pct", "half", "rotary_pct is 'half', but it must be a number in (0, 1]"),
        ("eos_token_id", "2", "eos_token_id is '2', but it must be a token id"),
        ("eos_token_id", [2, 96], "from 0 to vocab_size - 1 = 95"),
        ("use_parallel_residual", "false", "must be true or false"),
    ],
)
def test_config_json_of_wrong_type_or_range_is_one_line_naming_key_and_fix(tmp_path, key, value, words):
    write_checkpoint(tmp_path / "m", {**CONFIG, key: value})
    with pytest.raises(UserError) as info:
        GPTNeoXConfig.from_file(tmp_path / "m")
    message = str(info.value)
    assert words in message and str(tmp_path / "m" / "config.json") in message and "fix config.json" in message
    assert "\n" not in message


def test_num_hidden_layers_10000000_is_refused_from_the_headers_before_any_allocation(tmp_path):
    write_checkpoint(tmp_path / "m", {**CONFIG, "num_hidden_layers": 10_000_000})
    tracemalloc.start()
    try:
        with pytest.raises(UserError) as info:
            check_model_dir(tmp_path / "m", where="models[demo]")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 << 20  # the check read headers; it never built 10 million layers of anything
    message = str(info.value)
    assert "num_hidden_layers 10000000" in message and "config.json does not belong to these weights" in message


def test_parameter_count_matches_for_untied_and_tied_checkpoints(tmp_path):
    count = write_checkpoint(tmp_path / "untied", CONFIG)
    assert check_checkpoint(tmp_path / "untied", where="t")[1] == count
    tied = {**CONFIG, "tie_word_embeddings": True}
    count_tied = write_checkpoint(tmp_path / "tied", tied, tied=True)
    assert check_checkpoint(tmp_path / "tied", where="t")[1] == count_tied
    write_checkpoint(tmp_path / "short", CONFIG, layers=1)
    with pytest.raises(UserError, match="num_hidden_layers 2"):
        check_checkpoint(tmp_path / "short", where="t")


def test_estimated_peak_memory_beyond_the_machine_is_refused_naming_the_stage(tmp_path, caplog):
    count = write_checkpoint(tmp_path / "m", CONFIG)
    check_memory(count, where="models[demo]")  # a tiny model fits this machine
    # LINE's 3.6B: the engine's float16 weights bound the check and the evaluation; the streaming float32
    # reference fits 4 GiB (measured: 1.8 GB). The need is what the job asks a scheduler for (mem_mb):
    # check 10,100 MB, evaluate 11,400 MB.
    assert (mem_mb("check", 3_600_000_000), mem_mb("evaluate", 3_600_000_000)) == (10_100, 11_400)
    with pytest.raises(UserError, match=r"models\[line\]: stage check needs about 9.4 GiB for 3,600,000,000 "
                                        r"parameters, but this machine has 8.0 GiB of memory and swap"):
        check_memory(3_600_000_000, where="models[line]", memory=(8 * GiB, 6 * GiB))
    check_memory(3_600_000_000, where="models[line]", memory=(16 * GiB, 6 * GiB))
    assert "stage evaluate needs about 10.6 GiB, but only 6.0 GiB are free now" in caplog.text
    assert "stage convert needs" not in caplog.text  # the conversion streams: 0.6 GiB
    check_memory(3_600_000_000, where="models[line]", stages=("reference", "reference_answers"),
                 memory=(4 * GiB, 4 * GiB))


def workflow_model(model_id: str, name: str, **extra) -> dict:
    return {
        "id": model_id, "name": name, "checkpoint": None,
        "targets": {"iphone": {"context_window_size": 768, "prefill_chunk_size": 256}},
        "bundles": [f"{name}-q4f16_0-MLC"], "model_libs": [f"{name}-q4f16_0-MLC-iphone"],
        "hub_repos": [f"tester/{name}-q4f16_0-MLC"], **extra,
    }


def test_invalid_hub_name_duplicate_names_and_oversized_chunk_fail_at_dag_time():
    check_workflow([workflow_model("a", "model-a"), workflow_model("b", "model-b")])
    with pytest.raises(UserError, match=r"models\[a\]: name 'a..b' cannot be a Hugging Face repo name"):
        check_workflow([workflow_model("a", "a..b")])
    with pytest.raises(UserError, match="models a and b both make bundle 'same-q4f16_0-MLC'"):
        check_workflow([workflow_model("a", "same"), workflow_model("b", "same")])
    big = workflow_model("a", "model-a", targets={"mac": {"context_window_size": 512, "prefill_chunk_size": 1024}})
    with pytest.raises(UserError, match=r"targets.mac: prefill_chunk_size 1024 is larger than context_window_size 512"):
        check_workflow([big])


def test_checkpoint_on_disk_is_checked_at_dag_time(tmp_path):
    write_checkpoint(tmp_path / "m", {**CONFIG, "num_attention_heads": 0})
    with pytest.raises(UserError, match="num_attention_heads is 0"):
        check_workflow([workflow_model("a", "model-a", checkpoint=tmp_path / "m")])


def test_empty_stop_str_is_refused_at_patch(tmp_path):
    family = tmp_path / "line.yaml"
    text = (REPO / "config" / "families" / "line.yaml").read_text(encoding="utf-8")
    assert "  stop_str: []\n" in text
    family.write_text(text.replace("  stop_str: []\n", '  stop_str: [""]\n'), encoding="utf-8")
    with pytest.raises(UserError, match=r"template.stop_str.*should be non-empty"):
        load_family(family)
    shutil.copy(REPO / "config" / "families" / "line.yaml", family)
    load_family(family)
