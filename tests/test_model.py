"""The TVM GPT-NeoX module: its parameters are the params.py contract, and its quantized layers compute
what numpy's dequantization says.

Logits against transformers are in tests/test_runtime.py (they need a compiled library and weights).
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax.frontend import nn
from tvm.target import Target

from hf2mlc.model.gpt_neox.config import GPTNeoXConfig
from hf2mlc.model.gpt_neox.model import EXPORTED_FUNCTIONS, GPTNeoXForCausalLM
from hf2mlc.model.gpt_neox.params import param_specs
from hf2mlc.quantization import QUANTIZATIONS, get_quantization
from hf2mlc.quantization.group import dequantize, quantize_embedding, quantize_linear
from hf2mlc.quantization.nn import GroupQuantEmbedding, GroupQuantLinear, quantize_model
from tiny_models import VARIANTS

HOST = Target({"kind": "llvm"})


def _config(variant: str, **overrides) -> GPTNeoXConfig:
    spec = VARIANTS[variant]
    fields = {
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "intermediate_size": 256,
        "vocab_size": 128,
        "rotary_pct": spec["rotary_pct"],
        "rotary_emb_base": spec["rotary_emb_base"],
        "use_parallel_residual": spec["use_parallel_residual"],
        "tie_word_embeddings": spec["tie_word_embeddings"],
        "layer_norm_eps": spec["layer_norm_eps"],
        "hidden_act": spec["hidden_act"],
    }
    fields.update(overrides)
    return GPTNeoXConfig(**fields)


def _export(model: GPTNeoXForCausalLM):
    with HOST:
        return model.export_tvm(spec=model.get_default_spec(), allow_extern=True)


# ---------------------------------------------------------------- the parameter contract


@pytest.mark.parametrize("quantization", sorted(QUANTIZATIONS))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_exported_params_equal_param_specs(variant, quantization):
    # hidden 80 is not a multiple of q3's group (40 is, 80 = 2 groups) nor of 32: ragged groups for q4.
    config = _config(variant, hidden_size=80, num_attention_heads=5, intermediate_size=200, num_hidden_layers=1)
    q = get_quantization(quantization)
    # ffn_out_dtype only changes the MLP biases' dtype: both values for the two shipped schemes
    for ffn_out_dtype in ("float32", "float16") if quantization in ("q0f16", "q4f16_0") else ("float32",):
        model = GPTNeoXForCausalLM(config, q, ffn_out_dtype=ffn_out_dtype)
        _mod, named_params, _ = _export(model)
        got = [(name, tuple(int(s) for s in p.shape), str(p.dtype)) for name, p in named_params]
        want = [(s.name, s.shape, s.dtype) for s in param_specs(config, q, ffn_out_dtype=ffn_out_dtype)]
        assert got == want, (variant, quantization, ffn_out_dtype)


def test_exported_functions_and_argument_specs():
    model = GPTNeoXForCausalLM(_config("line"), "q4f16_0")
    mod, _params, _ = _export(model)
    public = {gv.name_hint for gv, f in mod.functions_items() if isinstance(f, relax.Function)}
    assert set(EXPORTED_FUNCTIONS) <= public
    assert "create_paged_kv_cache" not in public  # the engine looks up create_tir_paged_kv_cache

    def arg_types(name):
        return [str(p.ty) for p in mod[name].params]

    # MLC's specs: embeddings in the model dtype, symbolic sequence/batch lengths, packed params last.
    assert "int32" in arg_types("embed")[0] and "seq_len" in arg_types("embed")[0]
    assert "(1, seq_len, 64)" in arg_types("prefill")[0] and "float16" in arg_types("prefill")[0]
    assert "(1, 1, 64)" in arg_types("decode")[0]
    assert "(batch_size, 1, 64)" in arg_types("batch_decode")[0]
    assert "(batch_size,)" in arg_types("batch_prefill")[1]
    assert len(mod["create_tir_paged_kv_cache"].params) == 5
    # softmax_with_temperature takes no parameters (param_mode none)
    assert len(mod["softmax_with_temperature"].params) == 2


def test_metadata_lists_params_in_order_with_mlc_fields():
    config = _config("pythia")
    model = GPTNeoXForCausalLM(config, "q4f16_1", ffn_out_dtype="float16")
    _mod, named_params, _ = _export(model)
    meta = model.metadata(named_params, context_window_size=512, prefill_chunk_size=128, max_batch_size=2)
    assert meta["model_type"] == "gpt_neox" and meta["quantization"] == "q4f16_1"
    assert (meta["context_window_size"], meta["prefill_chunk_size"], meta["max_batch_size"]) == (512, 128, 2)
    assert meta["kv_state_kind"] == "kv_cache" and meta["sliding_window_size"] == -1
    assert meta["tensor_parallel_shards"] == 1 and meta["pipeline_parallel_stages"] == 1
    assert meta["kv_cache"] == {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 16}
    specs = param_specs(config, get_quantization("q4f16_1"), ffn_out_dtype="float16")
    assert [(p["name"], tuple(p["shape"]), p["dtype"]) for p in meta["params"]] == [(s.name, s.shape, s.dtype) for s in specs]
    assert all(p["preprocs"] == [] and p["pipeline_stages"] == [0] for p in meta["params"])


def test_quantize_model_leaves_float_schemes_alone():
    model = GPTNeoXForCausalLM(_config("line"), "q0f16")
    assert isinstance(model.embed_out, nn.Linear) and isinstance(model.gpt_neox.embed_in, nn.Embedding)
    model = GPTNeoXForCausalLM(_config("line"), "q4f16_0")
    assert isinstance(model.embed_out, GroupQuantLinear)
    assert isinstance(model.gpt_neox.embed_in, GroupQuantEmbedding)
    assert isinstance(model.gpt_neox.layers[1].mlp.dense_4h_to_h, GroupQuantLinear)
    assert model.gpt_neox.layers[0].mlp.dense_h_to_4h.out_dtype == "float32"
    # quantize_model on an already float module of another shape: the swap keeps biases' dtypes
    lin = quantize_model(nn.ModuleList([nn.Linear(32, 8, dtype="float16", out_dtype="float32")]), get_quantization("q4f16_1"))
    assert isinstance(lin[0], GroupQuantLinear) and str(lin[0].bias.dtype) == "float32"


# ---------------------------------------------------------------- in-model dequantization vs numpy


class _LinearProbe(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        return self.layer(x)


def _run(module: nn.Module, arg_spec: nn.spec.Tensor, arg: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    mod, named = module.export_tvm(spec={"forward": {"x": arg_spec, "$": {"param_mode": "plain", "effect_mode": "none"}}})
    ex = relax.build(mod, target=HOST)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    inputs = [tvm.runtime.tensor(arg)] + [tvm.runtime.tensor(params[name]) for name, _ in named]
    return vm["forward"](*inputs).numpy()


@pytest.mark.parametrize(
    ("quantization", "k", "n", "out_dtype"),
    [("q4f16_0", 64, 24, None), ("q4f16_1", 96, 16, "float32"), ("q3f16_0", 72, 8, None), ("q4f32_1", 40, 8, None)],
)
def test_group_quant_linear_matches_numpy_dequantize(quantization, k, n, out_dtype):
    q = get_quantization(quantization)
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(n, k)).astype(q.model_dtype)
    bias = rng.normal(size=(n,)).astype(out_dtype or q.model_dtype)
    x = rng.normal(size=(1, 3, k)).astype(q.model_dtype)
    q_weight, q_scale = quantize_linear(weight, q)
    layer = GroupQuantLinear(k, n, q, bias=True, out_dtype=out_dtype)
    got = _run(
        _LinearProbe(layer),
        nn.spec.Tensor([1, "s", k], q.model_dtype),
        x,
        {"layer.q_weight": q_weight, "layer.q_scale": q_scale, "layer.bias": bias},
    )
    axis = 0 if q.linear_weight_layout == "KN" else 1
    w_nk = dequantize(q_weight, q_scale, q, axis=axis, size=k)
    if q.linear_weight_layout == "KN":
        w_nk = w_nk.T
    want = x.astype(np.float64) @ w_nk.astype(np.float64).T + bias.astype(np.float64)
    assert got.shape == (1, 3, n) and str(got.dtype) == (out_dtype or q.model_dtype)
    rel = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert rel < (2e-3 if (out_dtype or q.model_dtype) == "float16" else 1e-5), rel


@pytest.mark.parametrize("quantization", ["q4f16_0", "q3f16_1"])
def test_group_quant_embedding_gathers_dequantized_rows(quantization):
    q = get_quantization(quantization)
    rng = np.random.default_rng(2)
    table = rng.normal(size=(50, 72)).astype(q.model_dtype)
    q_weight, q_scale = quantize_embedding(table, q)
    ids = np.array([3, 0, 49, 3, 17], dtype="int32")
    got = _run(
        _LinearProbe(GroupQuantEmbedding(50, 72, q)),
        nn.spec.Tensor(["n"], "int32"),
        ids,
        {"layer.q_weight": q_weight, "layer.q_scale": q_scale},
    )
    want = dequantize(q_weight, q_scale, q, axis=1, size=72)[ids]
    np.testing.assert_array_equal(got.astype(np.float32), want)  # same float16 operations: exact
