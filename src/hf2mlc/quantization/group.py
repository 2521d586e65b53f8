"""Group quantization in numpy, bit for bit as MLC LLM's TVM quantizer computes it.

MLC quantizes weights with a TE function compiled for the conversion device
(python/mlc_llm/quantization/group_quantization.py, ``GroupQuantize._quantize``). Its arithmetic, per
group of ``group_size`` weights along the reduction axis, all in the model dtype:

1. ``max_abs = max |w|``;  ``scale = max_abs / max_int`` (one rounding to the model dtype);
2. ``t = w / scale`` (rounded to the model dtype), then ``t + max_int`` (rounded again);
3. ``round`` half to even (TVM lowers it to ``llvm.nearbyint``);
4. clip to ``[0, 2 * max_int]`` the way TVM lowers ``max``/``min``: ``select(v > 0, v, 0)`` and
   ``select(v < hi, v, hi)``.  So a NaN (an all-zero group: ``0 / 0``) becomes 0 and ``±inf``
   (a group whose scale underflowed to 0) becomes ``hi``/0.  ``np.fmax``/``np.fmin`` have exactly
   these semantics, ``np.clip`` (which keeps NaN) does not;
5. pack ``num_elem_per_storage`` consecutive values into one storage word, element ``r`` shifted left
   by ``r * bits``; positions past the end of a ragged axis are zero (not ``max_int``).

numpy's float16 arithmetic computes each operation in float32 and rounds once to float16, which gives
the correctly rounded float16 result for + - * / (float32 has more than 2 * 11 + 2 bits), the same as
LLVM's promoted half arithmetic, so ``quantize`` below reproduces MLC's bytes exactly.  It is the
readable reference; :func:`quantize_rows_fast` is the converter's vectorized, threaded twin.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading

import numpy as np

from . import Quantization


def _require_group(q: Quantization) -> None:
    if q.kind != "group-quant":
        raise ValueError(f"{q.name} is not a group quantization")


def _to_model_dtype(weight: np.ndarray, q: Quantization) -> np.ndarray:
    # MLC's loader casts every source tensor to the model dtype before quantizing, so a float32 or
    # bfloat16 checkpoint is rounded to float16 first; quantizing the wider values would differ.
    return np.asarray(weight).astype(q.model_dtype, copy=False)


def _clip_like_tvm(v: np.ndarray, hi: int) -> np.ndarray:
    """``min(max(v, 0), hi)`` with TVM's select semantics (NaN -> 0, +inf -> hi, -inf -> 0)."""
    return np.fmin(np.fmax(v, 0), hi)


def pack(values: np.ndarray, q: Quantization) -> np.ndarray:
    """Pack unsigned quantized values along the last axis into storage words (zero-padded)."""
    _require_group(q)
    k = values.shape[-1]
    per = q.num_elem_per_storage
    n_storage = q.num_storage(k)
    padded = np.zeros((*values.shape[:-1], n_storage * per), dtype=np.uint32)
    padded[..., :k] = values
    shifts = (np.arange(per, dtype=np.uint32) * np.uint32(q.bits)).astype(np.uint32)
    words = padded.reshape(*values.shape[:-1], n_storage, per) << shifts
    return np.bitwise_or.reduce(words, axis=-1).astype(q.storage_dtype, copy=False)


def unpack(words: np.ndarray, q: Quantization, size: int | None = None) -> np.ndarray:
    """Inverse of :func:`pack` along the last axis: uint32 values, truncated to ``size``."""
    _require_group(q)
    per = q.num_elem_per_storage
    shifts = (np.arange(per, dtype=np.uint32) * np.uint32(q.bits)).astype(np.uint32)
    mask = np.uint32((1 << q.bits) - 1)
    values = (words.astype(np.uint32)[..., None] >> shifts) & mask
    values = values.reshape(*words.shape[:-1], words.shape[-1] * per)
    return values if size is None else values[..., :size]


def quantize(weight: np.ndarray, q: Quantization, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Group-quantize ``weight`` along ``axis``, with no transpose.

    Returns ``(q_weight, q_scale)``: ``q_weight`` (storage dtype) has ``axis`` packed to
    ``q.num_storage(k)`` words, ``q_scale`` (model dtype) has it reduced to ``q.num_groups(k)``.
    """
    _require_group(q)
    w = np.moveaxis(_to_model_dtype(weight, q), axis, -1)
    dtype = w.dtype.type
    k = w.shape[-1]
    n_group, gs = q.num_groups(k), q.group_size
    if n_group * gs != k:
        w = np.concatenate([w, np.zeros((*w.shape[:-1], n_group * gs - k), dtype=w.dtype)], axis=-1)
    groups = w.reshape(*w.shape[:-1], n_group, gs)
    max_int = dtype(q.max_int_value)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale = np.abs(groups).max(axis=-1) / max_int
        shifted = groups / scale[..., None] + max_int  # two roundings in the model dtype, as in MLC
    values = _clip_like_tvm(np.round(shifted), 2 * q.max_int_value).astype(np.uint32)
    values = values.reshape(*w.shape[:-1], n_group * gs)[..., :k]
    q_weight = pack(values, q)
    return (
        np.ascontiguousarray(np.moveaxis(q_weight, -1, axis)),
        np.ascontiguousarray(np.moveaxis(scale.astype(q.model_dtype, copy=False), -1, axis)),
    )


def dequantize(
    q_weight: np.ndarray,
    q_scale: np.ndarray,
    q: Quantization,
    *,
    axis: int = -1,
    size: int | None = None,
) -> np.ndarray:
    """``(q - max_int) * scale`` along ``axis``, computed in the model dtype as MLC's model does.

    Returned as float32 (exact: every model-dtype value is a float32).  ``size`` is the original
    length of ``axis`` (defaults to the padded length).
    """
    _require_group(q)
    dtype = np.dtype(q.model_dtype)
    words = np.moveaxis(np.asarray(q_weight), axis, -1)
    scale = np.moveaxis(np.asarray(q_scale).astype(dtype, copy=False), axis, -1)
    values = unpack(words, q, size)
    per_elem_scale = np.repeat(scale, q.group_size, axis=-1)[..., : values.shape[-1]]
    out = (values.astype(dtype) - dtype.type(q.max_int_value)) * per_elem_scale
    return np.moveaxis(out.astype(np.float32), -1, axis)


def quantize_linear(weight_nk: np.ndarray, q: Quantization) -> tuple[np.ndarray, np.ndarray]:
    """Quantize a Linear weight [N (out), K (in)] along K, laid out as ``q.linear_weight_layout``.

    "NK": ``q_weight`` [N, K/elem], ``q_scale`` [N, groups]; "KN" (q4f16_0): both transposed.
    """
    _require_group(q)
    if np.ndim(weight_nk) != 2:
        raise ValueError(f"a linear weight must be 2-D, got shape {np.shape(weight_nk)}")
    q_weight, q_scale = quantize(weight_nk, q, axis=-1)
    if q.linear_weight_layout == "KN":
        return np.ascontiguousarray(q_weight.T), np.ascontiguousarray(q_scale.T)
    return q_weight, q_scale


def quantize_embedding(weight_vh: np.ndarray, q: Quantization) -> tuple[np.ndarray, np.ndarray]:
    """Quantize an embedding table [V, H] along H; never transposed (the model gathers rows)."""
    _require_group(q)
    return quantize(weight_vh, q, axis=-1)


# ---------------------------------------------------------------------------------------------
# Fast path: the same numbers, computed in float32 blocks on all cores.
#
# Every float16 operation above is "compute in float32, round once to float16" (numpy does exactly
# that, and so does LLVM for half arithmetic on CPUs without native fp16).  Here values stay in
# float32 and only the rounding to float16 precision is applied: adding and subtracting an offset of
# 1.5 * 2**13 times the value's own power of two, so that the hardware rounds half to even at float16's
# bit (cheaper than casting back and forth).  That is the exact float16 rounding over float16's normal
# range; outside it the two can differ only where the final integer cannot: a quotient below 2**-14
# becomes exactly max_int after "+ max_int" either way, and one beyond float16's range (inf there, a
# large finite value here) clips to the same end.
# Other shortcuts, each exact:
# * float16 -> float32 by bits: the magnitude shifted left by 13 and reinterpreted is the value times
#   2**-112 (numpy's own cast is a scalar loop, ten times slower); the general route multiplies by
#   2**112, rows of whole power-of-two groups divide by the scale times 2**-112 instead;
# * max |w| per group as an integer max over the float16 bit patterns without sign (monotonic),
#   for power-of-two groups by halving adjacent pairs;
# * the divisor repeated to one value per weight (a contiguous divide);
# * clip with np.clip, then the groups whose scale is 0 (the only source of NaN: 0/0) are set as
#   TVM sets them, from the quotient's sign before rounding: +inf -> 2*max_int, -inf and NaN -> 0.
# Blocks holding inf or NaN weights take the plain path.  tests/test_quantization.py checks every
# finite float16 value under a range of scales, ragged axes, permuted rows, int3 and float32 models.
# ---------------------------------------------------------------------------------------------

_SIGN_EXPONENT = np.uint32(0xFF800000)
_ROUNDING_OFFSET = np.float32(1.5 * 2.0**13)
_TWO_POW_112 = np.float32(2.0**112)
_TWO_POW_MINUS_112 = np.float32(2.0**-112)
_BLOCK_ELEMS = 1 << 19  # 2 MB of float32 per block: fewer numpy calls per byte, so fewer GIL hand-overs between threads


def _round_to_f16_precision(values: np.ndarray, tmp: np.ndarray) -> None:
    """In place: round float32 ``values`` to 11 significant bits, half to even (``tmp``: uint32 scratch).

    Adding ``c = ±1.5 * 2**(e + 13)`` (``±2**e``: the value's own sign and power of two) puts the sum
    where float32's spacing is 2**(e - 10), float16's at ``e``, so the hardware rounds it half to even
    to exactly those bits, and subtracting ``c`` again is exact: four passes, one fewer than integer
    rounding at bit 13.  inf becomes NaN (only ever a quotient by a zero scale, fixed afterwards).
    """
    np.bitwise_and(values.view(np.uint32), _SIGN_EXPONENT, out=tmp)
    offset = tmp.view(np.float32)
    offset *= _ROUNDING_OFFSET
    values += offset
    values -= offset


class _Scratch(threading.local):
    """Per-thread work buffers, reused across blocks (fresh temporaries would page-fault each time)."""

    def __init__(self) -> None:
        self.size = 0

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.size < n:
            self.u32 = np.empty(n, np.uint32)
            self.tmp = np.empty(n, np.uint32)
            self.u16 = np.empty(n, np.uint16)
            self.size = n
        return self.u32[:n], self.tmp[:n], self.u16[:n]


_SCRATCH = _Scratch()


def _group_max_magnitude(h: np.ndarray, gs: int) -> np.ndarray:
    """max |w| per group of ``gs`` (a power of two) consecutive float16 bit patterns ``h`` (flat uint16),
    as uint16 bits.  Halving adjacent pairs through a uint32 view, level by level: numpy's reduce
    over a 32-long axis pays its per-row overhead on every group, which made it the costliest step
    of the quantizer."""
    pairs = h.view(np.uint32) & np.uint32(0x7FFF7FFF)  # both signs dropped: magnitudes order as ints
    while True:
        values = np.maximum(pairs >> np.uint32(16), pairs & np.uint32(0xFFFF)).astype(np.uint16)
        gs //= 2
        if gs == 1:
            return values
        pairs = values.view(np.uint32)


def _load_aligned_half(src: np.ndarray, q: Quantization, u32: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """float16 rows whose length is a whole number of power-of-two groups: their values times 2**-112
    into ``u32`` (as float32 bits), and the scales with the divisor (the scales times 2**-112), in fewer
    passes than the general route (None: inf/NaN weights).  Both operands of the division scaled by
    the same power of two (exactly: every float16 times 2**-112 is a float32, subnormal or not) give
    the same correctly rounded quotient."""
    rows, k = src.shape
    h = np.ascontiguousarray(src).view(np.uint16)
    max_bits = _group_max_magnitude(h.reshape(-1), q.group_size).reshape(rows, k // q.group_size)
    if max_bits.size and max_bits.max() >= 0x7C00:
        return None
    # float16 -> float32 by bits with the sign in place: sign-extended to 32 bits and shifted left by
    # 13, the sign lands in bit 31 and its three copies above the exponent are cleared.
    bits = u32.view(np.int32).reshape(rows, k)
    np.copyto(bits, h.view(np.int16))
    bits <<= 13
    u32 &= np.uint32(0x8FFFFFFF)
    mi = np.float32(q.max_int_value)
    if max_bits.size and max_bits.min() >= np.array(q.max_int_value * 2.0**-14, np.float16).view(np.uint16):
        # Every scale a normal float16: max / max_int rounded to float16 is the same rounding of the
        # quotient times 2**-112 (a normal float32), whose bits shifted right by 13 are the scale's.
        divisor = (max_bits.astype(np.uint32) << np.uint32(13)).view(np.float32)
        divisor /= mi
        _round_to_f16_precision(divisor, np.empty(divisor.shape, np.uint32))
        return (divisor.view(np.uint32) >> np.uint32(13)).astype(np.uint16).view(np.float16), divisor
    scale = (max_bits.view(np.float16).astype(np.float32) / mi).astype(np.float16)
    return scale, scale.astype(np.float32) * _TWO_POW_MINUS_112


def _quantize_block(src: np.ndarray, q: Quantization) -> tuple[np.ndarray, np.ndarray]:
    """Quantize rows ``src`` [r, k] along k; returns (words [r, n_storage], scale [r, n_group])."""
    rows, k = src.shape
    n_group, gs, mi = q.num_groups(k), q.group_size, q.max_int_value
    width = n_group * gs
    half = q.model_dtype == "float16"
    if src.dtype != np.dtype(q.model_dtype):
        src = src.astype(q.model_dtype)  # MLC casts to the model dtype before quantizing
    u32, tmp, u16 = _SCRATCH.get(rows * width)
    f = u32.view(np.float32).reshape(rows, width)
    aligned = half and width == k and gs > 1 and gs & (gs - 1) == 0
    if aligned:
        loaded = _load_aligned_half(src, q, u32)
        if loaded is None:
            return quantize(src, q)  # inf or NaN weights: the reference semantics
        scale, divisor = loaded
    elif half:
        bits = u32.reshape(rows, width)
        h = np.ascontiguousarray(src).view(np.uint16)
        mag = u16.reshape(rows, width)
        np.bitwise_and(h, np.uint16(0x7FFF), out=mag[:, :k])
        mag[:, k:] = 0
        max_bits = mag.reshape(rows, n_group, gs).max(axis=-1)
        if max_bits.size and max_bits.max() >= 0x7C00:
            return quantize(src, q)  # inf or NaN weights: the reference semantics
        scale = (max_bits.view(np.float16).astype(np.float32) / np.float32(mi)).astype(np.float16)
        divisor = scale.astype(np.float32)
        sign = tmp.reshape(rows, width)
        np.bitwise_and(h, np.uint16(0x8000), out=sign[:, :k], casting="unsafe")
        sign[:, k:] = 0
        sign <<= np.uint32(16)
        np.left_shift(mag, np.uint32(13), out=bits, casting="unsafe")
        bits |= sign
        f *= _TWO_POW_112
    else:
        f[:, :k] = src
        f[:, k:] = 0
        magnitude = tmp.view(np.float32).reshape(rows, width)
        np.abs(f, out=magnitude)
        max_abs = magnitude.reshape(rows, n_group, gs).max(axis=-1)
        if max_abs.size and not np.isfinite(max_abs).all():
            return quantize(src, q)
        scale = divisor = max_abs / np.float32(mi)
    groups = f.reshape(rows, n_group, gs)
    zero = divisor == 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # a contiguous divisor (one value per weight) divides faster than a broadcast one
        np.divide(f, np.repeat(divisor, gs, axis=1), out=f)
        positive = groups[zero] > 0 if zero.any() else None  # w / 0: +inf, -inf, NaN (0 / 0)
        if half:
            _round_to_f16_precision(u32.view(np.float32), tmp)
        f += np.float32(mi)
        if half:
            _round_to_f16_precision(u32.view(np.float32), tmp)
        np.rint(f, out=f)
        np.clip(f, 0, 2 * mi, out=f)
        values = f.astype(np.uint8)
    if positive is not None:  # w / 0: +inf -> 2*max_int; -inf and NaN (0/0) -> 0, as TVM's select-based clip
        values.reshape(rows, n_group, gs)[zero] = np.where(positive, 2 * mi, 0)
    values[:, k:] = 0  # padding packs as zero bits, not as max_int
    n_storage = q.num_storage(k)
    if q.bits == 4 and q.storage_dtype == "uint32" and sys.byteorder == "little":
        # Two values per byte, first in the low nibble; four such bytes read as a little-endian uint32
        # put element r at bits 4r, which is pack()'s layout.  (w | w >> 4) & 0xFF on byte pairs.
        pairs = values.view(np.uint16)
        packed = (pairs | (pairs >> np.uint16(4))).astype(np.uint8)
        words = packed.view(np.uint32).reshape(rows, n_storage)
    else:
        words = pack(values[:, :k].astype(np.uint32), q)
    return words, scale.astype(q.model_dtype, copy=False)


def _worker_count(threads: int | None) -> int:
    if threads is not None:
        return max(1, threads)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def quantize_rows_fast(
    weight: np.ndarray,
    q: Quantization,
    *,
    transpose: bool = False,
    threads: int | None = None,
    block_rows: int | None = None,
    row_order: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize` along the last axis of a 2-D ``weight``, bit-identical, on ``threads`` cores.

    ``transpose=True`` returns both outputs transposed (the "KN" layout) without a separate copy.
    ``row_order`` quantizes ``weight[row_order]`` (a row permutation such as the fused-QKV regrouping)
    block by block, without a reordered copy of the whole weight.  Row blocks are independent:
    threads take the next one as they finish (numpy releases the GIL inside each operation), the
    calling thread among them.
    """
    _require_group(q)
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f"quantize_rows_fast takes a 2-D weight, got shape {weight.shape}")
    rows, k = weight.shape
    if row_order is not None and np.shape(row_order) != (rows,):
        raise ValueError(f"row_order must list {rows} rows, got shape {np.shape(row_order)}")
    n_storage, n_group = q.num_storage(k), q.num_groups(k)
    if transpose:
        out_w = np.empty((n_storage, rows), np.uint32)
        out_s = np.empty((n_group, rows), q.model_dtype)
    else:
        out_w = np.empty((rows, n_storage), np.uint32)
        out_s = np.empty((rows, n_group), q.model_dtype)
    step = block_rows or max(1, _BLOCK_ELEMS // max(1, n_group * q.group_size))

    def run(start: int) -> None:
        stop = min(rows, start + step)
        block = weight[start:stop] if row_order is None else weight[row_order[start:stop]]
        words, scale = _quantize_block(block, q)
        if transpose:
            out_w[:, start:stop] = words.T
            out_s[:, start:stop] = scale.T
        else:
            out_w[start:stop] = words
            out_s[start:stop] = scale

    starts = iter(range(0, rows, step))
    taking = threading.Lock()

    def drain() -> None:
        while True:
            with taking:
                start = next(starts, None)
            if start is None:
                return
            run(start)

    workers = min(_worker_count(threads), -(-rows // step))
    if workers <= 1:
        drain()
    else:
        with concurrent.futures.ThreadPoolExecutor(workers - 1, thread_name_prefix="quantize") as pool:
            helpers = [pool.submit(drain) for _ in range(workers - 1)]
            drain()
            for helper in helpers:
                helper.result()
    return out_w, out_s
