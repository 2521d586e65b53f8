"""The parameter set of MLC LLM's GPT-NeoX, for a given quantization: names, shapes, dtypes and order.

This is the contract between weight conversion (which writes these tensors into tensor-cache.json) and
the compiled model library (whose ``_metadata()["params"]`` lists the same names in the same order and
whose functions take them packed in that order).  It mirrors what MLC LLM's own ``gpt_neox`` model and
quantizers produce, so a bundle's weights are interchangeable with MLC's:

* names follow Hugging Face (``gpt_neox.layers.{i}.attention.query_key_value.weight`` …); quantized
  weights become ``<module>.q_weight`` (uint32) and ``<module>.q_scale`` (model dtype);
* ``embed_out`` is always present, also for checkpoints with tied embeddings (it is then a copy of
  ``gpt_neox.embed_in``), because MLC's GPT-NeoX has a separate output projection;
* the MLP biases are stored in ``ffn_out_dtype`` (MLC's default "float32"; the write-up used "float16");
* ``query_key_value`` rows are reordered from Hugging Face's per-head [q, k, v] interleave to
  [all q, all k, all v] (``reorder_qkv``).

Order follows module construction order, which is what ``nn.Module.export_tvm`` yields.
"""

from __future__ import annotations

import dataclasses

from ...quantization import Quantization
from .config import GPTNeoXConfig


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One tensor of the packed parameter list."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    #: Hugging Face tensor this one is computed from (``None`` for none).
    source: str
    #: "cast" (to ``dtype``), or "q_weight"/"q_scale" (the two outputs of group quantization).
    transform: str
    #: For quantized tensors: "linear" (layout per quantization) or "embedding" (never transposed).
    kind: str = "plain"
    #: Reorder rows from Hugging Face's per-head [q, k, v] interleave to [all q, all k, all v] first.
    reorder_qkv: bool = False


def _linear(
    name: str,
    out_features: int,
    in_features: int,
    *,
    quantization,
    dtype: str,
    bias_dtype: str | None,
    reorder_qkv: bool = False,
) -> list[ParamSpec]:
    """Specs of one Linear: weight (or q_weight/q_scale) then bias."""
    specs: list[ParamSpec] = []
    if quantization.kind == "group-quant":
        n_group = -(-in_features // quantization.group_size)
        n_storage = n_group * quantization.num_storage_per_group
        if quantization.linear_weight_layout == "KN":
            q_shape, s_shape = (n_storage, out_features), (n_group, out_features)
        else:
            q_shape, s_shape = (out_features, n_storage), (out_features, n_group)
        specs.append(ParamSpec(f"{name}.q_weight", q_shape, quantization.storage_dtype, f"{name}.weight", "q_weight", "linear", reorder_qkv))
        specs.append(ParamSpec(f"{name}.q_scale", s_shape, dtype, f"{name}.weight", "q_scale", "linear", reorder_qkv))
    else:
        specs.append(ParamSpec(f"{name}.weight", (out_features, in_features), dtype, f"{name}.weight", "cast", "plain", reorder_qkv))
    if bias_dtype is not None:
        specs.append(ParamSpec(f"{name}.bias", (out_features,), bias_dtype, f"{name}.bias", "cast", "plain", reorder_qkv))
    return specs


def _layer_norm(name: str, size: int, dtype: str) -> list[ParamSpec]:
    return [
        ParamSpec(f"{name}.weight", (size,), dtype, f"{name}.weight", "cast"),
        ParamSpec(f"{name}.bias", (size,), dtype, f"{name}.bias", "cast"),
    ]


def param_specs(config: GPTNeoXConfig, quantization: Quantization, *, ffn_out_dtype: str = "float32") -> list[ParamSpec]:
    """The full, ordered parameter list for ``config`` under ``quantization``."""
    dtype = quantization.model_dtype
    hidden, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    specs: list[ParamSpec] = []
    if quantization.kind == "group-quant" and quantization.quantize_embedding:
        n_group = -(-hidden // quantization.group_size)
        specs += [
            ParamSpec("gpt_neox.embed_in.q_weight", (vocab, n_group * quantization.num_storage_per_group), quantization.storage_dtype, "gpt_neox.embed_in.weight", "q_weight", "embedding"),
            ParamSpec("gpt_neox.embed_in.q_scale", (vocab, n_group), dtype, "gpt_neox.embed_in.weight", "q_scale", "embedding"),
        ]
    else:
        specs.append(ParamSpec("gpt_neox.embed_in.weight", (vocab, hidden), dtype, "gpt_neox.embed_in.weight", "cast"))
    for i in range(config.num_hidden_layers):
        p = f"gpt_neox.layers.{i}"
        specs += _layer_norm(f"{p}.input_layernorm", hidden, dtype)
        specs += _layer_norm(f"{p}.post_attention_layernorm", hidden, dtype)
        specs += _linear(f"{p}.attention.query_key_value", 3 * hidden, hidden, quantization=quantization, dtype=dtype, bias_dtype=dtype, reorder_qkv=True)
        specs += _linear(f"{p}.attention.dense", hidden, hidden, quantization=quantization, dtype=dtype, bias_dtype=dtype)
        specs += _linear(f"{p}.mlp.dense_h_to_4h", inter, hidden, quantization=quantization, dtype=dtype, bias_dtype=ffn_out_dtype)
        specs += _linear(f"{p}.mlp.dense_4h_to_h", hidden, inter, quantization=quantization, dtype=dtype, bias_dtype=ffn_out_dtype)
    specs += _layer_norm("gpt_neox.final_layer_norm", hidden, dtype)
    embed_out_source = "gpt_neox.embed_in.weight" if config.tie_word_embeddings else "embed_out.weight"
    quantize_final = quantization.kind == "group-quant" and quantization.quantize_final_fc
    if quantize_final:
        out = _linear("embed_out", vocab, hidden, quantization=quantization, dtype=dtype, bias_dtype=None)
    else:
        out = [ParamSpec("embed_out.weight", (vocab, hidden), dtype, "embed_out.weight", "cast")]
    specs += [dataclasses.replace(s, source=embed_out_source) for s in out]
    return specs


def checkpoint_parameter_count(config: GPTNeoXConfig) -> int:
    """The parameters config.json implies a checkpoint stores (a tied head once), computed, never enumerated:
    the enumeration could itself be the allocation the DAG-time check of a wrong config.json exists to prevent.
    It lives beside :func:`param_specs` because it must equal that enumeration (tests/test_resources.py)."""
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    per_layer = 4 * h + (3 * h * h + 3 * h) + (h * h + h) + (i * h + i) + (h * i + h)
    return v * h + config.num_hidden_layers * per_layer + 2 * h + (0 if config.tie_word_embeddings else v * h)


def parameter_count(config: GPTNeoXConfig) -> int:
    """The parameters the library reads (unquantized): what a job holds in memory, the tied head included
    (MLC's parameter set holds it as its own tensor)."""
    tied_head = config.vocab_size * config.hidden_size if config.tie_word_embeddings else 0
    return checkpoint_parameter_count(config) + tied_head
