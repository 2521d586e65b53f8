"""q4f16_0's dequantize-matmul on x86 CPUs with AVX-512 VNNI: 4-bit codes times 8-bit activation digits.

A float kernel spends at least four vector instructions on every 16 weights (unpack, convert, scale,
FMA), so on this machine class decode stays instruction-bound at a third of llama.cpp's speed, which
multiplies 4-bit codes with 8-bit activations (``vpdpbusd``: 64 multiply-adds per instruction).  This
kernel does the same inside MLC's q4f16_0 layout (codes ``[K/8, N]``, eight per uint32 with value ``i``
at bits ``4 i``; float16 scales ``[K/32, N]``; ``w = (q - 7) * scale``), so bundles are unchanged, but
keeps the activations nearly exact: each group of 32 inputs is written as ``d * (h + l / 254)`` with
two signed 8-bit digits ``h`` and ``l`` (one ``vpdpbusd`` each), an error of at most ``|x|max / 64516``
per group, far below the float16 rounding that every MLC device applies to activations anyway.

Per group of 32 inputs and output ``n``: ``sum_k (q - 7) x = d * (Q_h + Q_l / 254 - 7 (H + L / 254))``
with ``Q_h = sum q h`` and ``Q_l = sum q l`` exact in int32 and ``H``/``L`` the digits' sums, computed
once per row; the group's float scale is applied once per group.  The codes are read row by row of
the ``[K/8, N]`` array in contiguous runs (a thread owns a slice of outputs, a column-major walk would
touch a new page every 256 bytes), and each 16-output vector of codes is unpacked once for all the
input rows of a tile (prefill).  The result is the matmul's float32 sum, cast to the output dtype as
the float kernel does; epilogues (bias, GELU, residual add) fuse after it as before.
"""

from __future__ import annotations

import functools

import tvm
from tvm import tirx
from tvm.script import tirx as T

from ..quantization import Quantization
from .rewrite import rewrite_prim_funcs

BLOCK = "int8_dot_matmul"  # the kernel's main block: the CPU schedule finds the epilogue after it
_LANES = 16  # int32 / float32 lanes of a 512-bit register
_GROUP = 32  # inputs per scale group: four packed words
_WORDS = 4  # uint32 words per group (8 codes each)
_LOW_DIGIT = 254.0  # l = round((x/d - h) * 254) fits int8
_ROW_TILE = 32  # input rows per accumulator tile (32 x 512 float32 = 64 KiB, in L2)
_MASK = 0x0F0F0F0F  # the low nibble of each byte of a word


def supported(target: tvm.target.Target | None) -> bool:
    """Whether the target's CPU executes AVX-512 VNNI (read from the target: host builds only)."""
    if target is None or target.kind.name != "llvm":
        return False
    has = tvm.target.codegen.target_has_features
    return all(has(feature, target) for feature in ("avx512f", "avx512bw", "avx512vnni"))


def applies(quantization: Quantization) -> bool:
    """MLC's q4f16_0 layout exactly (KN, 4-bit codes in uint32, groups of 32, float16 scales)."""
    return (
        quantization.kind == "group-quant"
        and quantization.linear_weight_layout == "KN"
        and quantization.bits == 4
        and quantization.num_elem_per_storage == 8
        and quantization.group_size == _GROUP
        and quantization.storage_dtype == "uint32"
        and quantization.max_int_value == 7
    )


def _chunk(n: int) -> int | None:
    """Outputs per parallel task of the multi-row kernel: a power of two of at most 512."""
    for chunk in (512, 256, 128, 64, 32, 16):
        if n % chunk == 0:
            return chunk
    return None


def _slices(groups: int) -> int:
    """Slices of the reduction for the one-row kernel: each task streams one contiguous block of code
    rows (MLC's [K/8, N] layout is row-major), so the hardware prefetcher sees long sequential runs."""
    for slices in (8, 6, 4, 3, 2):
        if groups % slices == 0:
            return slices
    return 1


def _lanes(start):
    return T.ramp(start, 1, _LANES)


def _dot(acc, codes, digits):
    """``vpdpbusd``: per int32 lane, four code bytes (unsigned) times four activation digits (signed)."""
    return T.call_llvm_pure_intrin(
        "int32x16",
        "llvm.x86.avx512.vpdpbusd.512",
        acc,
        T.reinterpret(codes, dtype="int8x64"),
        T.reinterpret(T.broadcast(digits, _LANES), dtype="int8x64"),
    )


def _digits(xq, m, word, slot):
    return T.reinterpret(xq.vload([m, word, slot, 0], "int8x4"), dtype="int32")


@T.macro
def _quantize_row(x, xq, x_offset, x_scale, m, d1, groups):
    # xq[m, word, slot, byte]: slots 0/1 the high digits of the word's even/odd codes, 2/3 the low ones
    for g in range(groups):
        with T.sblock("quantize_activations"):
            T.reads(x[m // d1, m % d1, g * _GROUP : g * _GROUP + _GROUP])
            T.writes(xq[m, g * _WORDS : g * _WORDS + _WORDS, 0:4, 0:4], x_offset[m, g], x_scale[m, g])
            peak = T.sblock_alloc_buffer((1,), "float32", scope="local")
            sums = T.sblock_alloc_buffer((2,), "float32", scope="local")
            peak[0] = T.float32(0)
            sums[0] = T.float32(0)
            sums[1] = T.float32(0)
            for i in range(_GROUP):
                peak[0] = T.max(peak[0], T.fabs(T.Cast("float32", x[m // d1, m % d1, g * _GROUP + i])))
            inverse = T.float32(127) / T.max(peak[0], T.float32(1e-30))
            for i in range(_GROUP):
                v = T.Cast("float32", x[m // d1, m % d1, g * _GROUP + i]) * inverse
                h = T.round(v)
                low = T.round((v - h) * T.float32(_LOW_DIGIT))
                xq[m, g * _WORDS + i // 8, i % 2, i % 8 // 2] = T.Cast("int8", h)
                xq[m, g * _WORDS + i // 8, 2 + i % 2, i % 8 // 2] = T.Cast("int8", low)
                sums[0] = sums[0] + h
                sums[1] = sums[1] + low
            x_offset[m, g] = T.float32(7) * (T.float32(_LOW_DIGIT) * sums[0] + sums[1])
            x_scale[m, g] = T.max(peak[0], T.float32(1e-30)) / T.float32(127 * _LOW_DIGIT)


@T.macro
def _unpack(codes, q_weight, g, col):
    for j in T.unroll(_WORDS):
        word = T.reinterpret(q_weight[g * _WORDS + j, _lanes(col)], dtype="int32x16")
        codes[2 * j, _lanes(0)] = T.bitwise_and(word, T.broadcast(T.int32(_MASK), _LANES))
        codes[2 * j + 1, _lanes(0)] = T.bitwise_and(
            T.shift_right(word, T.broadcast(T.int32(4), _LANES)), T.broadcast(T.int32(_MASK), _LANES)
        )


@T.macro
def _group_dot(acc, row, col, codes, dots, scale, xq, x_offset, x_scale, m, g):
    """acc[row, col:col+16] += this group's sum for input row ``m``: four independent vpdpbusd chains
    ((high, low digit) x (words 0-1, words 2-3)), then one float step per group."""
    for a in T.unroll(4):
        dots[a, _lanes(0)] = T.broadcast(T.int32(0), _LANES)
    for j in T.unroll(_WORDS):
        for p in T.unroll(2):
            dots[j // 2, _lanes(0)] = _dot(dots[j // 2, _lanes(0)], codes[2 * j + p, _lanes(0)], _digits(xq, m, g * _WORDS + j, p))
            dots[2 + j // 2, _lanes(0)] = _dot(
                dots[2 + j // 2, _lanes(0)], codes[2 * j + p, _lanes(0)], _digits(xq, m, g * _WORDS + j, 2 + p)
            )
    total = (
        T.Cast("float32x16", dots[0, _lanes(0)] + dots[1, _lanes(0)]) * T.broadcast(T.float32(_LOW_DIGIT), _LANES)
        + T.Cast("float32x16", dots[2, _lanes(0)] + dots[3, _lanes(0)])
        - T.broadcast(x_offset[m, g], _LANES)
    )
    acc[row, _lanes(col)] = acc[row, _lanes(col)] + total * (scale * T.broadcast(x_scale[m, g], _LANES))


def _buffer_types(d0: tirx.PrimExpr, d1: tirx.PrimExpr, k: int, n: int, x_dtype: str, out_dtype: str) -> tuple:
    """The four parameters' buffer types, as the float kernel has them: relax sizes are int64 and fusion
    compares buffer types, index dtype included."""
    k_, n_, words_, groups_ = (tirx.IntImm("int64", v) for v in (k, n, k // 8, k // _GROUP))
    return (T.Buffer((d0, d1, k_), x_dtype), T.Buffer((words_, n_), "uint32"), T.Buffer((groups_, n_), "float16"),
            T.Buffer((d0, d1, n_), out_dtype))


def _one_row_kernel(k: int, n: int, x_dtype: str, out_dtype: str) -> tirx.PrimFunc | None:
    """Decode: one input row.  Bound by reading the codes once, so the reduction is cut into slices
    that each stream a contiguous block of code rows; the slices' partial sums are added per output."""
    chunk = _chunk(n)
    if chunk is None:
        return None
    words, groups = k // 8, k // _GROUP
    slices = _slices(groups)
    per_slice = groups // slices
    one = tirx.IntImm("int64", 1)
    x_type, weight_type, scale_type, out_type = _buffer_types(one, one, k, n, x_dtype, out_dtype)

    @T.prim_func(private=True, s_tir=True)
    def main(x: x_type, q_weight: weight_type, q_scale: scale_type, out: out_type):
        T.func_attr({"tirx.noalias": True, "op_pattern": 4})
        xq = T.sblock_alloc_buffer((1, words, 4, 4), "int8")
        x_offset = T.sblock_alloc_buffer((1, groups), "float32")
        x_scale = T.sblock_alloc_buffer((1, groups), "float32")
        partial = T.sblock_alloc_buffer((slices, n), "float32")
        _quantize_row(x, xq, x_offset, x_scale, 0, 1, groups)
        for s in T.parallel(slices):
            with T.sblock("int8_dot_slice"):
                T.reads(
                    q_weight[s * per_slice * _WORDS : (s + 1) * per_slice * _WORDS, 0:n],
                    q_scale[s * per_slice : (s + 1) * per_slice, 0:n],
                    xq[0, 0:words, 0:4, 0:4],
                    x_offset[0, 0:groups],
                    x_scale[0, 0:groups],
                )
                T.writes(partial[s, 0:n])
                codes = T.sblock_alloc_buffer((2 * _WORDS, _LANES), "int32", scope="local")
                dots = T.sblock_alloc_buffer((4, _LANES), "int32", scope="local")
                for v in range(n // _LANES):
                    partial[s, _lanes(v * _LANES)] = T.broadcast(T.float32(0), _LANES)
                for gi, v in T.grid(per_slice, n // _LANES):
                    _unpack(codes, q_weight, s * per_slice + gi, v * _LANES)
                    scale = T.Cast("float32x16", q_scale[s * per_slice + gi, _lanes(v * _LANES)])
                    _group_dot(partial, s, v * _LANES, codes, dots, scale, xq, x_offset, x_scale, 0, s * per_slice + gi)
        for c in T.parallel(n // chunk):
            with T.sblock(BLOCK):
                T.reads(partial[0:slices, c * chunk : c * chunk + chunk])
                T.writes(out[0, 0, c * chunk : c * chunk + chunk])
                total = T.sblock_alloc_buffer((_LANES,), "float32", scope="local")
                for v in range(chunk // _LANES):
                    total[_lanes(0)] = partial[0, _lanes(c * chunk + v * _LANES)]
                    for s in range(1, slices):
                        total[_lanes(0)] = total[_lanes(0)] + partial[s, _lanes(c * chunk + v * _LANES)]
                    out[0, 0, _lanes(c * chunk + v * _LANES)] = T.Cast(out_dtype + "x16", total[_lanes(0)])

    return main


def _rows_kernel(d0: tirx.PrimExpr, d1: tirx.PrimExpr, k: int, n: int, x_dtype: str, out_dtype: str) -> tirx.PrimFunc | None:
    """Prefill and batches: parallel over slices of outputs; each 16-output vector of codes is unpacked
    once per group for all the rows of a tile of inputs, whose sums stay in a small scratch tile."""
    chunk = _chunk(n)
    if chunk is None:
        return None
    words, groups, vectors = k // 8, k // _GROUP, chunk // _LANES
    x_type, weight_type, scale_type, out_type = _buffer_types(d0, d1, k, n, x_dtype, out_dtype)

    def rows(a, b):
        return a * b

    def tiles(a, b):
        return (a * b + _ROW_TILE - 1) // _ROW_TILE

    def tile_rows(a, b, t):
        return T.min(_ROW_TILE, a * b - t * _ROW_TILE)

    @T.prim_func(private=True, s_tir=True)
    def main(x: x_type, q_weight: weight_type, q_scale: scale_type, out: out_type):
        T.func_attr({"tirx.noalias": True, "op_pattern": 4})
        xq = T.sblock_alloc_buffer((rows(d0, d1), words, 4, 4), "int8")
        x_offset = T.sblock_alloc_buffer((rows(d0, d1), groups), "float32")
        x_scale = T.sblock_alloc_buffer((rows(d0, d1), groups), "float32")
        for m in T.parallel(rows(d0, d1)):  # serial, it would hold the other threads for ~8 % of a prefill
            _quantize_row(x, xq, x_offset, x_scale, m, d1, groups)
        for c in T.parallel(n // chunk):
            with T.sblock(BLOCK):
                T.reads(
                    q_weight[0:words, c * chunk : c * chunk + chunk],
                    q_scale[0:groups, c * chunk : c * chunk + chunk],
                    xq[0 : rows(d0, d1), 0:words, 0:4, 0:4],
                    x_offset[0 : rows(d0, d1), 0:groups],
                    x_scale[0 : rows(d0, d1), 0:groups],
                )
                T.writes(out[0:d0, 0:d1, c * chunk : c * chunk + chunk])
                acc = T.sblock_alloc_buffer((_ROW_TILE, chunk), "float32")
                codes = T.sblock_alloc_buffer((2 * _WORDS, _LANES), "int32", scope="local")
                dots = T.sblock_alloc_buffer((4, _LANES), "int32", scope="local")
                for t in range(tiles(d0, d1)):
                    for r, v in T.grid(tile_rows(d0, d1, t), vectors):
                        acc[r, _lanes(v * _LANES)] = T.broadcast(T.float32(0), _LANES)
                    for g, v in T.grid(groups, vectors):
                        _unpack(codes, q_weight, g, c * chunk + v * _LANES)
                        scale = T.Cast("float32x16", q_scale[g, _lanes(c * chunk + v * _LANES)])
                        for r in range(tile_rows(d0, d1, t)):
                            _group_dot(acc, r, v * _LANES, codes, dots, scale, xq, x_offset, x_scale, t * _ROW_TILE + r, g)
                    for r, v in T.grid(tile_rows(d0, d1, t), vectors):
                        out[(t * _ROW_TILE + r) // d1, (t * _ROW_TILE + r) % d1, _lanes(c * chunk + v * _LANES)] = T.Cast(
                            out_dtype + "x16", acc[r, _lanes(v * _LANES)]
                        )

    return main


def kernel(d0: tirx.PrimExpr, d1: tirx.PrimExpr, k: int, n: int, x_dtype: str, out_dtype: str) -> tirx.PrimFunc | None:
    """``out[a, b, :] = x[a, b, :] @ dequantize(q_weight, q_scale)`` for ``x`` of shape ``(d0, d1, k)``:
    the caller's leading sizes (static, or symbolic under the caller's names), so that fusion sees the
    same buffers."""
    if k % _GROUP:
        return None
    sizes = (_size_key(d0), _size_key(d1))
    if None in sizes:  # a size expression, not a number or a variable: built for this caller alone
        return _build(d0, d1, k, n, x_dtype, out_dtype)
    return _cached(*sizes, k, n, x_dtype, out_dtype)


def _size_key(size: tirx.PrimExpr) -> tuple[str, int | str] | None:
    if isinstance(size, tirx.IntImm):
        return ("static", int(size))
    if isinstance(size, tirx.Var):
        return ("var", size.name)
    return None


@functools.lru_cache(maxsize=None)
def _cached(d0: tuple[str, int | str], d1: tuple[str, int | str], k: int, n: int, x_dtype: str, out_dtype: str) -> tirx.PrimFunc | None:
    """One kernel per shape and process, shared by every call site and every build of the process.

    TVMScript's parser walks the whole Python call stack at each prim_func and macro (``inspect.stack``),
    which made parsing these kernels about a third of a tiny model's host build under cProfile (4.5 of
    12.6 s; unprofiled the whole build is ~7 s). A symbolic size becomes a new variable of the caller's name: each PrimFunc binds its
    own size variables from its buffers, so the kernel does not need the caller's variable object."""

    def size(key: tuple[str, int | str]) -> tirx.PrimExpr:
        kind, value = key
        return tirx.IntImm("int64", int(value)) if kind == "static" else tirx.Var(str(value), "int64")

    return _build(size(d0), size(d1), k, n, x_dtype, out_dtype)


def _build(d0: tirx.PrimExpr, d1: tirx.PrimExpr, k: int, n: int, x_dtype: str, out_dtype: str) -> tirx.PrimFunc | None:
    if _equal_static(d0, 1) and _equal_static(d1, 1):
        return _one_row_kernel(k, n, x_dtype, out_dtype)
    return _rows_kernel(d0, d1, k, n, x_dtype, out_dtype)


def _is_dequantize_matmul(func: tirx.PrimFunc) -> bool:
    sch = tvm.s_tir.Schedule(func)
    try:
        sch.get_sblock("dequantize")
        sch.get_sblock("matmul")
    except (tvm.s_tir.ScheduleError, ValueError, RuntimeError):
        return False
    return True


def replacement(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """The int8-dot kernel for a q4f16_0 ``dequantize_matmul`` PrimFunc, or None when it does not fit."""
    if len(func.params) != 4:
        return None
    x, q_weight, q_scale, out = (p.ty for p in func.params)  # each parameter's buffer type: shape, dtype
    if len(x.shape) != 3 or len(out.shape) != 3 or len(q_weight.shape) != 2 or len(q_scale.shape) != 2:
        return None
    static = [q_weight.shape[0], q_weight.shape[1], q_scale.shape[0], x.shape[2]]
    if not all(isinstance(d, tirx.IntImm) for d in static):
        return None
    k, n = int(x.shape[2]), int(q_weight.shape[1])
    if (
        str(q_weight.dtype) != "uint32"
        or str(q_scale.dtype) != "float16"
        or int(q_weight.shape[0]) * 8 != k
        or int(q_scale.shape[0]) * _GROUP != k
        or int(q_scale.shape[1]) != n
        or not isinstance(out.shape[2], tirx.IntImm)
        or int(out.shape[2]) != n
        or str(x.dtype) not in ("float16", "float32")
        or not _is_dequantize_matmul(func)
    ):
        return None
    if not (out.shape[0].same_as(x.shape[0]) or _equal_static(out.shape[0], x.shape[0])) or not (
        out.shape[1].same_as(x.shape[1]) or _equal_static(out.shape[1], x.shape[1])
    ):
        return None
    return kernel(x.shape[0], x.shape[1], k, n, str(x.dtype), str(out.dtype))


def _equal_static(a: tirx.PrimExpr, b: tirx.PrimExpr | int) -> bool:
    b_value = b if isinstance(b, int) else (int(b) if isinstance(b, tirx.IntImm) else None)
    return isinstance(a, tirx.IntImm) and b_value is not None and int(a) == b_value


def ReplaceDequantizeMatmul(target: tvm.target.Target, quantization: Quantization) -> tvm.transform.Pass:  # noqa: N802
    """Swap each q4f16_0 dequantize-matmul for the int8-dot kernel, before fusion (so epilogues fuse)."""

    @tvm.transform.module_pass(opt_level=0, name="ReplaceDequantizeMatmul")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if not (supported(target) and applies(quantization)):
            return mod
        return rewrite_prim_funcs(mod, lambda g_var, func: replacement(func) if "dequantize_matmul" in g_var.name_hint else None)

    return _pass
