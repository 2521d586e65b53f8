"""Group quantization: hand-computed words, round trips, layouts, edge cases, and a TVM cross-check.

The independent reference is a quantizer written as a TVM tensor expression from MLC LLM's published
algorithm (python/mlc_llm/quantization/group_quantization.py: scale, rounding, packing), compiled for ``llvm`` and run on the CPU, the same way MLC LLM runs its
own quantizer during ``convert_weight``; the numpy packers must agree with it bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from hf2mlc.errors import UserError
from hf2mlc.quantization import QUANTIZATIONS, get_quantization
from hf2mlc.quantization.group import (
    dequantize,
    pack,
    quantize,
    quantize_embedding,
    quantize_linear,
    quantize_rows_fast,
    unpack,
)

Q4F16_0 = get_quantization("q4f16_0")
Q4F16_1 = get_quantization("q4f16_1")
Q4F32_1 = get_quantization("q4f32_1")
Q3F16_1 = get_quantization("q3f16_1")


def _words(*hexes: int) -> np.ndarray:
    return np.array(hexes, dtype=np.uint32)


# ---------------------------------------------------------------- registry


def test_registry_matches_mlc_table():
    expected = {  # name: (kind, model dtype, group, qdtype, layout, elem/storage, storage/group, max int)
        "q0f16": ("no-quant", "float16", 0, "", "", 0, 0, 0),
        "q0f32": ("no-quant", "float32", 0, "", "", 0, 0, 0),
        "q3f16_0": ("group-quant", "float16", 40, "int3", "KN", 10, 4, 3),
        "q3f16_1": ("group-quant", "float16", 40, "int3", "NK", 10, 4, 3),
        "q4f16_0": ("group-quant", "float16", 32, "int4", "KN", 8, 4, 7),
        "q4f16_1": ("group-quant", "float16", 32, "int4", "NK", 8, 4, 7),
        "q4f32_1": ("group-quant", "float32", 32, "int4", "NK", 8, 4, 7),
    }
    assert set(QUANTIZATIONS) == set(expected)
    for name, (kind, dtype, gs, qd, layout, per, spg, mi) in expected.items():
        q = QUANTIZATIONS[name]
        got = (q.kind, q.model_dtype, q.group_size, q.quantize_dtype, q.linear_weight_layout,
               q.num_elem_per_storage, q.num_storage_per_group, q.max_int_value)
        assert got == (kind, dtype, gs, qd, layout, per, spg, mi), name
        if kind == "group-quant":
            assert q.storage_dtype == "uint32" and q.quantize_embedding and q.quantize_final_fc


def test_unknown_quantization_is_a_user_error():
    with pytest.raises(UserError, match=r"'q4f16'.*q4f16_0.*q4f16_1"):
        get_quantization("q4f16")


# ---------------------------------------------------------------- hand-computed words


def test_hand_vector_exact_scale():
    # max |w| = 7 -> scale = 1 exactly; q = round(w + 7) half to even, clipped to [0, 14].
    w = np.zeros(32, dtype=np.float16)
    w[:8] = [0, 1, 2, 3, 4, 5, 6, 7]  # q 7..14          -> nibbles 7,8,9,A,B,C,D,E
    w[8:16] = [-1, -2, -3, -4, -5, -6, -7, 0.5]  # q 6..0, 7.5->8 -> 6,5,4,3,2,1,0,8
    w[16:20] = [1.5, 2.5, -0.5, -1.5]  # 8.5->8, 9.5->10, 6.5->6, 5.5->6; rest 0 -> 7
    q_weight, q_scale = quantize(w[None, :], Q4F16_1)
    np.testing.assert_array_equal(q_weight[0], _words(0xEDCBA987, 0x80123456, 0x777766A8, 0x77777777))
    assert q_scale.dtype == np.float16 and q_scale.view(np.uint16)[0, 0] == 0x3C00  # 1.0


def test_hand_vector_float16_rounding_steps():
    # max |w| = 1 -> scale = fp16(1/7) = 1170 * 2**-13 = 0.142822265625 (bits 0x3092).
    # 0.0712890625 / scale = 0.49914.. -> fp16 0.4990234375; + 7 = 7.499.. -> fp16 (step 2**-8) 7.5;
    # half to even -> 8, where exact arithmetic would give 7.  Likewise 0.21435546875 -> 8.5 -> 8,
    # 0.35693359375 -> 2.5 + 7 -> 10, 0.5 -> 3.5008 -> fp16 3.5 -> 10.5 -> 10, 0.642578125 -> 12,
    # 0.78564453125 -> 12.5 -> 12, 0.927734375 -> 13.5 -> 14, and 1.0 -> 7.0017 -> fp16 7 -> 14.
    w = np.zeros(32, dtype=np.float16)
    w[:8] = [1.0, 0.0712890625, 0.21435546875, 0.35693359375, 0.5, 0.642578125, 0.78564453125, 0.927734375]
    q_weight, q_scale = quantize(w[None, :], Q4F16_1)
    assert q_scale.view(np.uint16)[0, 0] == 0x3092
    np.testing.assert_array_equal(q_weight[0], _words(0xECCAA88E, 0x77777777, 0x77777777, 0x77777777))


def test_hand_vector_zero_and_underflowing_groups():
    # An all-zero group: scale 0, 0/0 = NaN, and TVM's max(NaN, 0) is select(NaN > 0, ..) = 0.
    # A group whose max is the smallest subnormal 2**-24: scale = fp16(2**-24 / 7) = 0, so
    # +2**-24 -> +inf -> 14, -2**-24 -> -inf -> 0, and the zeros -> NaN -> 0.
    w = np.zeros((2, 32), dtype=np.float16)
    tiny = np.float16(2.0**-24)
    w[1, 0], w[1, 1] = tiny, -tiny
    q_weight, q_scale = quantize(w, Q4F16_1)
    np.testing.assert_array_equal(q_weight, [[0, 0, 0, 0], [0x0000000E, 0, 0, 0]])
    np.testing.assert_array_equal(q_scale.view(np.uint16), [[0], [0]])
    # Dequantized, both groups are exact zeros: (q - 7) * 0.
    assert not np.any(dequantize(q_weight, q_scale, Q4F16_1))


def test_hand_vector_ragged_axis_is_zero_padded():
    # K = 12: one group of 32 with 20 padding positions; padding nibbles are 0, not 7.
    w = np.zeros((1, 12), dtype=np.float16)
    w[0, 0], w[0, 1] = 7, -7  # scale 1: q 14, 0, then ten 7s
    q_weight, _ = quantize(w, Q4F16_1)
    np.testing.assert_array_equal(q_weight[0], _words(0x7777770E, 0x00007777, 0, 0))


def test_hand_vector_int3():
    # q3: 10 values of 3 bits per uint32 (bits 30-31 unused), group 40, scale = max|w| / 3.
    w = np.zeros((1, 40), dtype=np.float16)
    w[0, :10] = [0, 1, 2, 3, -1, -2, -3, 0, 0, 0]  # scale 1: q 3,4,5,6,2,1,0,3,3,3
    q_weight, q_scale = quantize(w, Q3F16_1)
    expected0 = (3 | 4 << 3 | 5 << 6 | 6 << 9 | 2 << 12 | 1 << 15 | 0 << 18 | 3 << 21 | 3 << 24 | 3 << 27)
    assert expected0 == 0x1B60AD63
    np.testing.assert_array_equal(q_weight[0], _words(0x1B60AD63, 0x1B6DB6DB, 0x1B6DB6DB, 0x1B6DB6DB))
    assert float(q_scale[0, 0]) == 1.0


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("q", [Q4F16_1, Q4F32_1, Q3F16_1], ids=lambda q: q.name)
def test_pack_unpack_round_trip(q):
    rng = np.random.default_rng(1)
    k = 3 * q.group_size + 5
    values = rng.integers(0, 2 * q.max_int_value + 1, size=(7, k), dtype=np.uint32)
    words = pack(values, q)
    assert words.shape == (7, q.num_storage(k)) and words.dtype == np.uint32
    np.testing.assert_array_equal(unpack(words, q, k), values)
    np.testing.assert_array_equal(unpack(words, q)[:, k:], 0)


@pytest.mark.parametrize("q", [Q4F16_1, Q4F32_1, Q3F16_1], ids=lambda q: q.name)
def test_error_is_at_most_half_a_step(q):
    rng = np.random.default_rng(2)
    k = 4 * q.group_size + 7
    w = (rng.standard_normal((64, k)) * 0.05).astype(q.model_dtype)
    q_weight, q_scale = quantize(w, q)
    restored = dequantize(q_weight, q_scale, q, size=k)
    step = np.repeat(q_scale.astype(np.float32), q.group_size, axis=-1)[:, :k]
    err = np.abs(restored - w.astype(np.float32))
    # Half a step, plus the model-dtype roundings of w/scale and of the product (a few ulp).
    slack = 4 * np.finfo(q.model_dtype).eps * (np.abs(w.astype(np.float32)) + step)
    assert np.all(err <= step / 2 + slack)
    rel = float(np.sqrt(np.mean(err**2)) / np.sqrt(np.mean(w.astype(np.float32) ** 2)))
    assert 0.005 < rel < (0.12 if q.bits == 4 else 0.25)  # 4-bit RMS error is ~8% of the RMS weight


def test_max_abs_element_is_exact_and_extremes_are_used():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 64)).astype(np.float16)
    q_weight, q_scale = quantize(w, Q4F16_1)
    values = unpack(q_weight, Q4F16_1, 64).reshape(16, 2, 32)
    w_groups = w.reshape(16, 2, 32)
    arg = np.abs(w_groups).argmax(-1)
    at_max = np.take_along_axis(values, arg[..., None], -1)[..., 0]
    sign = np.sign(np.take_along_axis(w_groups, arg[..., None], -1)[..., 0])
    np.testing.assert_array_equal(at_max, np.where(sign > 0, 14, 0))


def test_kn_and_nk_hold_the_same_numbers_transposed():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((48, 96)).astype(np.float16)  # N = 48 out, K = 96 in
    qw0, qs0 = quantize_linear(w, Q4F16_0)
    qw1, qs1 = quantize_linear(w, Q4F16_1)
    assert qw0.shape == (12, 48) and qs0.shape == (3, 48)
    assert qw1.shape == (48, 12) and qs1.shape == (48, 3)
    assert qw0.flags.c_contiguous and qs0.flags.c_contiguous
    np.testing.assert_array_equal(qw0, qw1.T)
    np.testing.assert_array_equal(qs0.view(np.uint16), qs1.view(np.uint16).T)
    np.testing.assert_array_equal(
        dequantize(qw0, qs0, Q4F16_0, axis=0, size=96), dequantize(qw1, qs1, Q4F16_1, size=96).T
    )


def test_embedding_is_never_transposed():
    w = np.random.default_rng(5).standard_normal((10, 64)).astype(np.float16)
    for q in (Q4F16_0, Q4F16_1):
        qw, qs = quantize_embedding(w, q)
        assert qw.shape == (10, 8) and qs.shape == (10, 2)
        np.testing.assert_array_equal(qw, quantize(w, Q4F16_1)[0])


def test_axis_zero_equals_transposed_quantization():
    w = np.random.default_rng(6).standard_normal((70, 9)).astype(np.float16)
    qw, qs = quantize(w, Q4F16_1, axis=0)
    qw_t, qs_t = quantize(np.ascontiguousarray(w.T), Q4F16_1)
    assert qw.shape == (12, 9) and qs.shape == (3, 9)
    np.testing.assert_array_equal(qw, qw_t.T)
    np.testing.assert_array_equal(qs, qs_t.T)


def test_source_is_cast_to_model_dtype_first():
    # A float32 source must be rounded to float16 before quantizing (MLC's loader casts first).
    rng = np.random.default_rng(7)
    w32 = rng.standard_normal((32, 64)).astype(np.float32)
    a = quantize(w32, Q4F16_1)
    b = quantize(w32.astype(np.float16), Q4F16_1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1].view(np.uint16), b[1].view(np.uint16))
    assert a[1].dtype == np.float16


# ---------------------------------------------------------------- fast path


@pytest.mark.parametrize("q", [Q4F16_1, Q4F32_1, Q3F16_1], ids=lambda q: q.name)
def test_fast_path_is_bit_identical(q):
    w = _awkward_weights(np.random.default_rng(8), (301, 4 * q.group_size + 13), q.model_dtype)
    ref_w, ref_s = quantize(w, q)
    fast_w, fast_s = quantize_rows_fast(w, q, threads=2, block_rows=64)
    np.testing.assert_array_equal(fast_w, ref_w)
    np.testing.assert_array_equal(fast_s.view(f"u{fast_s.itemsize}"), ref_s.view(f"u{ref_s.itemsize}"))


@pytest.mark.parametrize("q", [Q4F16_1, Q3F16_1], ids=lambda q: q.name)
def test_fast_path_whole_groups_regrouped_rows(q):
    # Rows of whole groups (the converter's case: every LINE matrix), read through a row permutation
    # and transposed, as the fused QKV weight is: equal to the reference on the permuted rows.
    w = _awkward_weights(np.random.default_rng(11), (96, 6 * q.group_size), q.model_dtype)
    order = np.random.default_rng(12).permutation(w.shape[0])
    ref_w, ref_s = quantize(w[order], q)
    fast_w, fast_s = quantize_rows_fast(w, q, transpose=True, threads=2, block_rows=7, row_order=order)
    np.testing.assert_array_equal(fast_w, ref_w.T)
    np.testing.assert_array_equal(fast_s.view(np.uint16), ref_s.T.view(np.uint16))


def test_fast_path_exhaustive_float16_quotients():
    # Every finite float16 value as a weight, under a spread of scales: all rounding paths.
    allw = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16)
    allw = np.concatenate([allw, -allw])
    n = allw.size // 31 * 31
    body = allw[:n].reshape(-1, 31)
    maxes = np.float16(2.0) ** np.arange(-24, 16, dtype=np.float16).astype(np.float16)
    rows = []
    for m in maxes:
        rows.append(np.concatenate([np.clip(body, -m, m), np.full((body.shape[0], 1), m, np.float16)], axis=1))
    w = np.concatenate(rows)
    ref_w, ref_s = quantize(w, Q4F16_1)
    fast_w, fast_s = quantize_rows_fast(w, Q4F16_1, threads=2)
    np.testing.assert_array_equal(fast_w, ref_w)
    np.testing.assert_array_equal(fast_s.view(np.uint16), ref_s.view(np.uint16))


def test_fast_path_with_inf_nan_and_wider_sources():
    import ml_dtypes

    rng = np.random.default_rng(10)
    w = (rng.standard_normal((80, 96)) * 0.05).astype(np.float16)
    w[3, 5], w[70, 40] = np.inf, np.nan  # a broken checkpoint: those blocks take the plain path
    sources = [w, rng.standard_normal((80, 96)).astype(np.float32),
               rng.standard_normal((80, 96)).astype(np.float32).astype(ml_dtypes.bfloat16)]
    for src in sources:
        for q in (Q4F16_1, Q4F32_1):
            ref_w, ref_s = quantize(src, q)
            with np.errstate(invalid="ignore"):
                fast_w, fast_s = quantize_rows_fast(src, q, threads=2, block_rows=16)
            np.testing.assert_array_equal(fast_w, ref_w)
            np.testing.assert_array_equal(fast_s.view(f"u{fast_s.itemsize}"), ref_s.view(f"u{ref_s.itemsize}"))


# ---------------------------------------------------------------- TVM cross-check


def _awkward_weights(rng: np.random.Generator, shape: tuple[int, int], dtype: str) -> np.ndarray:
    """Random weights plus the groups that stress the arithmetic: all zero, tiny, huge, ties."""
    w = (rng.standard_normal(shape) * 0.02).astype(dtype)
    w[0, :] = 0  # every group all zero
    w[1, :] = np.array(2.0**-24, dtype=dtype) * rng.integers(-1, 2, shape[1])  # scale underflows (fp16)
    w[2, :] = rng.standard_normal(shape[1]) * 1000  # large values
    w[3, :] = rng.integers(-7, 8, shape[1]) * 0.5  # many exact .5 ties
    w[4, 5:] = 0  # mostly zero
    return w


def _tvm_group_quantizer(n: int, k: int, q, transpose: bool):
    """A group quantizer written in TVM TE from the spec, built for llvm (the CPU)."""
    import tvm
    from tvm import te, tirx

    dt, gs, per, bits, mi = q.model_dtype, q.group_size, q.num_elem_per_storage, q.bits, q.max_int_value
    n_group = -(-k // gs)
    n_storage = n_group * q.num_storage_per_group
    weight = te.placeholder((n, k), dt, name="weight")
    r = te.reduce_axis((0, gs), name="r")
    max_abs = te.compute(
        (n, n_group),
        lambda i, g: te.max(
            tirx.if_then_else(g * gs + r < k, te.abs(weight[i, g * gs + r]), tirx.const(0, dt)), axis=r
        ),
        name="max_abs",
    )
    scale = te.compute((n, n_group), lambda i, g: max_abs[i, g] / tirx.const(mi, dt), name="scale")
    ints = te.compute(
        (n, k),
        lambda i, j: tirx.min(
            tirx.max(tirx.round(weight[i, j] / scale[i, j // gs] + tirx.const(mi, dt)), tirx.const(0, dt)),
            tirx.const(2 * mi, dt),
        ).astype("uint32"),
        name="ints",
    )
    e = te.reduce_axis((0, per), name="e")
    packed = te.compute(
        (n, n_storage),
        lambda i, s: te.sum(
            tirx.if_then_else(
                s * per + e < k,
                ints[i, s * per + e] << (e * bits).astype("uint32"),
                tirx.const(0, "uint32"),
            ),
            axis=e,
        ),
        name="packed",
    )
    if transpose:
        out_w = te.compute((n_storage, n), lambda s, i: packed[i, s], name="q_weight")
        out_s = te.compute((n_group, n), lambda g, i: scale[i, g], name="q_scale")
    else:
        out_w, out_s = packed, scale
    func = te.create_prim_func([weight, out_w, out_s])
    lib = tvm.compile(tvm.IRModule({"main": func}), target="llvm")

    def run(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dev = tvm.cpu()
        qw = tvm.runtime.tensor(np.zeros([int(x) for x in out_w.shape], "uint32"), dev)
        qs = tvm.runtime.tensor(np.zeros([int(x) for x in out_s.shape], dt), dev)
        lib["main"](tvm.runtime.tensor(w, dev), qw, qs)
        return qw.numpy(), qs.numpy()

    return run


@pytest.mark.parametrize(
    "q, k",
    [(Q4F16_0, 96), (Q4F16_1, 77), (Q4F32_1, 64), (Q3F16_1, 93)],
    ids=["q4f16_0", "q4f16_1-ragged", "q4f32_1", "q3f16_1-ragged"],
)
def test_numpy_packer_matches_tvm_bit_for_bit(q, k):
    rng = np.random.default_rng(9)
    n = 257
    w = _awkward_weights(rng, (n, k), q.model_dtype)
    tvm_w, tvm_s = _tvm_group_quantizer(n, k, q, transpose=q.linear_weight_layout == "KN")(w)
    np_w, np_s = quantize_linear(w, q)
    assert np_w.shape == tvm_w.shape and np_s.shape == tvm_s.shape
    np.testing.assert_array_equal(np_w, tvm_w)
    itemsize = np.dtype(q.model_dtype).itemsize
    np.testing.assert_array_equal(np_s.view(f"u{itemsize}"), tvm_s.view(f"u{itemsize}"))
    # Not vacuous: every quantized value 0..14 occurs, and the special rows did their thing.
    values = unpack(np_w.T if q.linear_weight_layout == "KN" else np_w, q, k)
    assert set(np.unique(values)) == set(range(2 * q.max_int_value + 1))
    assert not values[0].any()
