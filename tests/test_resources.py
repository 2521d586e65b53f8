"""Cluster memory requests: linear in the parameter count through the measured peaks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from hf2mlc import demo
from hf2mlc.model.gpt_neox.config import GPTNeoXConfig
from hf2mlc.model.gpt_neox.params import param_specs, parameter_count
from hf2mlc.quantization import get_quantization
from hf2mlc.resources import (
    DEMO_PARAMETERS,
    LINE_3_6B_PARAMETERS,
    MEASURED_PEAK_MIB,
    MODEL_SIZED_RULES,
    mem_mb,
    mem_mb_for_model,
)


#: LINE's japanese-large-lm-3.6b config.json (the sizes that matter).
LINE = {"model_type": "gpt_neox", "hidden_size": 3072, "num_attention_heads": 32, "num_hidden_layers": 30,
        "intermediate_size": 12288, "vocab_size": 51200, "tie_word_embeddings": True,
        "use_parallel_residual": False}


def _line() -> GPTNeoXConfig:
    return GPTNeoXConfig.from_dict(LINE)


def test_measured_models_parameter_counts() -> None:
    assert parameter_count(_line()) == LINE_3_6B_PARAMETERS
    # LINE's 3.6B counted by hand: embeddings, 30 layers, final norm, and the head, which MLC's parameter
    # set holds as its own tensor even where the checkpoint ties it to the embeddings.
    h, i, v, n = 3072, 12288, 51200, 30
    layer = (3 * h * h + 3 * h) + (h * h + h) + (i * h + i) + (h * i + h) + 4 * h
    assert LINE_3_6B_PARAMETERS == v * h + n * layer + 2 * h + v * h
    demo_config = GPTNeoXConfig.from_dict(demo.model_config())
    assert parameter_count(demo_config) == DEMO_PARAMETERS
    # The count is computed; the library's parameter set, enumerated, is the reference.
    for config in (_line(), demo_config, GPTNeoXConfig.from_dict({**LINE, "num_hidden_layers": 2, "tie_word_embeddings": False})):
        specs = param_specs(config, get_quantization("q0f32"))
        assert parameter_count(config) == sum(math.prod(spec.shape) for spec in specs)


def test_the_dag_time_check_weighs_exactly_the_rules_that_grow_with_the_model() -> None:
    assert MODEL_SIZED_RULES == ("convert", "convert_calibrated", "compile", "check", "evaluate", "reference",
                                 "reference_answers")


def test_mem_mb_passes_through_both_measurements_with_headroom() -> None:
    for rule, (small, large) in MEASURED_PEAK_MIB.items():
        at_demo, at_line = mem_mb(rule, DEMO_PARAMETERS), mem_mb(rule, LINE_3_6B_PARAMETERS)
        assert small * 1.048576 * 1.25 <= at_demo < small * 1.048576 * 1.25 + 100, rule
        assert large * 1.048576 * 1.25 <= at_line < large * 1.048576 * 1.25 + 100, rule
        assert mem_mb(rule, 2 * LINE_3_6B_PARAMETERS) >= at_line  # grows (or stays) with the model
    # A 3.6B conversion streams; the evaluation holds the q0f16 engine's weights (the float32 reference is
    # streamed after it), so it asks for far more than the conversion but fits a 16 GB machine.
    assert mem_mb("convert", LINE_3_6B_PARAMETERS) < 1000 < 7_000 < mem_mb("evaluate", LINE_3_6B_PARAMETERS) < 16_000
    with pytest.raises(KeyError):
        mem_mb("no-such-rule", DEMO_PARAMETERS)


def test_mem_mb_reads_the_checkpoint_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LINE), encoding="utf-8")
    assert mem_mb_for_model("convert", tmp_path) == mem_mb("convert", parameter_count(_line()))
