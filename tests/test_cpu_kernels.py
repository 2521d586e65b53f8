"""The host's CPU kernels: the int8-dot q4f16_0 matmul against numpy and the error bound it claims,
and GELU with the polynomial erf against ``math.erf``.

The kernel writes each group of 32 activations as ``d * (h + l / 254)`` with ``d = max|x| / 127``, so
each activation is off by at most ``d / 508`` and an output by at most ``sum_k |w_k| * d_g(k) / 508``
(plus float32 rounding).  numpy computes the exact float32 product with the dequantized weights.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tvm
from tvm import relax, tirx
from tvm.script import relax as R

from hf2mlc.compile import export_model, make_target
from hf2mlc.compiler_pass import int8_dot_matmul
from hf2mlc.compiler_pass.cpu_gelu import CPU_LEGALIZE
from hf2mlc.compiler_pass.pipeline import model_pipeline
from hf2mlc.model.gpt_neox.config import GPTNeoXConfig
from hf2mlc.quantization import get_quantization
from hf2mlc.quantization.group import quantize_linear

TARGET = make_target("host")
needs_vnni = pytest.mark.skipif(
    not int8_dot_matmul.supported(TARGET), reason="this CPU has no AVX-512 VNNI: host builds keep the float kernels"
)
Q4 = get_quantization("q4f16_0")


def _weights(k: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MLC's q4f16_0 codes and scales of a random [N, K] weight, and the float32 weight they decode to."""
    weight = (rng.standard_normal((n, k)) * 0.05).astype(np.float16)
    q_weight, q_scale = quantize_linear(weight, Q4)  # KN: [K/8, N] uint32, [K/32, N] float16
    codes = (q_weight[np.arange(k) // 8] >> (4 * (np.arange(k) % 8))[:, None].astype(np.uint32)) & 15
    dequantized = (codes.astype(np.float32) - 7) * q_scale[np.arange(k) // 32].astype(np.float32)
    return q_weight, q_scale, dequantized  # dequantized: [K, N]


def _run(func: tirx.PrimFunc, *arrays: np.ndarray) -> None:
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=TARGET)
    tensors = [tvm.runtime.tensor(a, tvm.cpu()) for a in arrays]
    lib["main"](*tensors)
    arrays[-1][...] = tensors[-1].numpy()


def _bound(x: np.ndarray, dequantized: np.ndarray) -> np.ndarray:
    """Per output, the largest error the two 8-bit digits allow (float32 rounding on top: 1e-6 relative)."""
    groups = np.abs(x.astype(np.float32)).reshape(*x.shape[:-1], -1, 32).max(axis=-1) / 127
    step = np.repeat(groups, 32, axis=-1) / 508  # |x - d (h + l/254)| <= d / 508 per activation
    exact = np.abs(x.astype(np.float32)) @ np.abs(dequantized)
    return step @ np.abs(dequantized) + 1e-6 * exact


@needs_vnni
@pytest.mark.parametrize(("k", "n", "rows", "symbolic"), [(256, 512, 1, False), (160, 48, 5, True), (64, 192, 37, True)])
def test_kernel_matches_numpy_within_the_digit_bound(k, n, rows, symbolic):
    rng = np.random.default_rng(k + n + rows)
    q_weight, q_scale, dequantized = _weights(k, n, rng)
    x = rng.standard_normal((1, rows, k)).astype(np.float16)
    x[0, 0, :32] = 0  # an all-zero group
    x[0, -1, 32:64] *= 300  # a loud group next to quiet ones
    lead = tirx.Var("seq_len", "int64") if symbolic else tirx.IntImm("int64", rows)
    func = int8_dot_matmul.kernel(tirx.IntImm("int64", 1), lead, k, n, "float16", "float32")
    assert func is not None
    got = np.zeros((1, rows, n), np.float32)
    _run(func, x, q_weight, q_scale, got)
    want = x.astype(np.float32) @ dequantized
    error = np.abs(got - want)
    bound = _bound(x, dequantized)
    assert np.all(error <= bound), float((error / bound).max())
    # the digits are nearly exact: well below float16's rounding of the output (2**-11 relative)
    assert error.max() / np.abs(want).max() < 1e-4


@needs_vnni
def test_float16_output_is_the_rounded_float32_sum():
    rng = np.random.default_rng(7)
    q_weight, q_scale, dequantized = _weights(128, 64, rng)
    x = rng.standard_normal((1, 1, 128)).astype(np.float16)
    one = tirx.IntImm("int64", 1)
    wide = np.zeros((1, 1, 64), np.float32)
    narrow = np.zeros((1, 1, 64), np.float16)
    _run(int8_dot_matmul.kernel(one, one, 128, 64, "float16", "float32"), x, q_weight, q_scale, wide)
    _run(int8_dot_matmul.kernel(one, one, 128, 64, "float16", "float16"), x, q_weight, q_scale, narrow)
    np.testing.assert_array_equal(narrow, wide.astype(np.float16))


def test_unfit_shapes_keep_the_float_kernel():
    one = tirx.IntImm("int64", 1)
    assert int8_dot_matmul.kernel(one, one, 100, 64, "float16", "float16") is None  # K not whole groups
    assert int8_dot_matmul.kernel(one, one, 128, 40, "float16", "float16") is None  # N not whole vectors
    assert not int8_dot_matmul.applies(get_quantization("q4f16_1"))  # NK layout
    assert not int8_dot_matmul.applies(get_quantization("q3f16_0"))


@needs_vnni
def test_q4f16_0_host_build_uses_it_for_every_linear_and_fuses_the_epilogues():
    config = GPTNeoXConfig(
        hidden_size=64, num_attention_heads=4, num_hidden_layers=1, intermediate_size=256, vocab_size=128,
        rotary_pct=0.5, tie_word_embeddings=False, use_parallel_residual=True,
    )
    mod, metadata = export_model(config, Q4, context_window_size=32, prefill_chunk_size=8, target=TARGET)
    pipeline = model_pipeline(
        TARGET, metadata=metadata, variable_bounds={"seq_len": 8, "total_seq_len": 32, "batch_size": 1},
        hidden_size=64, dtype="float16", quantization=Q4, inline_rope=False,
    )
    with tvm.transform.PassContext(opt_level=3):
        lowered = pipeline(mod)
    matmuls = {gv.name_hint: f.script() for gv, f in lowered.functions_items() if "dequantize_matmul" in gv.name_hint}
    assert matmuls and all(int8_dot_matmul.BLOCK in script for script in matmuls.values()), sorted(matmuls)
    # bias, GELU and residual adds run inside the kernel's function (fused), not as passes of their own
    assert any("gelu" in name for name in matmuls) and any(name.endswith("_add") for name in matmuls)


def _gelu_module(dtype: str) -> tvm.IRModule:
    @tvm.script.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor((4096,), dtype)) -> R.Tensor((4096,), dtype):
            return R.nn.gelu(x)

    return Module


def _run_relax(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(tvm.compile(mod, target=TARGET), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy()


def test_cpu_gelu_is_erf_gelu_within_float_rounding_and_calls_no_libm():
    fast = relax.transform.LegalizeOps(customize_legalize_map=CPU_LEGALIZE)(_gelu_module("float32"))
    assert "erf(" not in fast["gelu"].script()  # no scalar erff call left to block vectorisation
    x = np.linspace(-8, 8, 4096).astype(np.float32)
    exact = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    assert np.abs(_run_relax(fast, x) - exact).max() <= 1e-6 * np.abs(x).max()


def test_cpu_gelu_in_float16_is_the_stock_lowering_to_one_ulp():
    x = np.linspace(-8, 8, 4096).astype(np.float16)
    fast = _run_relax(relax.transform.LegalizeOps(customize_legalize_map=CPU_LEGALIZE)(_gelu_module("float16")), x)
    stock = _run_relax(relax.transform.LegalizeOps()(_gelu_module("float16")), x)
    ulp = np.spacing(np.abs(stock)).astype(np.float32)
    assert np.all(np.abs(fast.astype(np.float32) - stock.astype(np.float32)) <= ulp)
    assert (fast != stock).mean() < 0.05  # a rounding flip here and there, not a different function


def test_host_build_runs_the_kv_cache_attention_kernels_in_parallel():
    config = GPTNeoXConfig(
        hidden_size=64, num_attention_heads=4, num_hidden_layers=1, intermediate_size=256, vocab_size=128,
        rotary_pct=0.5, tie_word_embeddings=False, use_parallel_residual=True,
    )
    mod, metadata = export_model(config, get_quantization("q0f32"), context_window_size=32, prefill_chunk_size=8, target=TARGET)
    pipeline = model_pipeline(
        TARGET, metadata=metadata, variable_bounds={"seq_len": 8, "total_seq_len": 32, "batch_size": 1},
        hidden_size=64, dtype="float32", quantization=get_quantization("q0f32"), inline_rope=False,
    )
    with tvm.transform.PassContext(opt_level=3):
        lowered = pipeline(mod)
    attention = {"batch_prefill_ragged_kv", "batch_prefill_paged_kv_cpu", "batch_decode_paged_kv_cpu"}
    scripts = {gv.name_hint: f.script() for gv, f in lowered.functions_items() if gv.name_hint in attention}
    assert set(scripts) == attention
    for name, script in scripts.items():
        assert "T.parallel(" in script and 'T.sblock("attn_row")' in script, name
        assert "rotary_mode == 1" not in script, name  # the inline-RoPE branch is folded away
    # the logits of prefill and decode through these kernels: test_runtime (engine vs transformers)
