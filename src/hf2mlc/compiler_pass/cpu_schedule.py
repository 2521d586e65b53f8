"""A CPU schedule for the model's matmuls, so that host builds run at a usable speed.

Host libraries exist to check the model (logits against transformers, perplexity of the LINE model),
which means billions of multiply-adds per token.  Left unscheduled, LLVM gets scalar loops whose
innermost reduction walks a weight column with a stride (about 1 GFLOP/s here); dlight's CPU GEMV
rule is no help (it makes LLVM spend minutes on one tiny kernel).  This pass schedules exactly the
kernels that carry the work: a function with one ``matmul`` reduction block (hf2mlc's float
Linear, and the dequantize-matmul of a quantized Linear), its dequantize prologue and its
elementwise epilogue (bias, GELU, residual add, casts: FuseOps puts them in the same function).

* One input row (decode) is a GEMV, bound by reading the weight once: a quantized weight is
  dequantized inside the loads and never written.  Weight laid out [K, N] (KN quantized):
  vectors across outputs ``n``, the reduction outside, unrolled over the values of one packed word
  (its shifts become constants and the word is loaded once).  Weight laid out [N, K] (float and NK
  quantized): vectors of partial sums along ``k`` (``rfactor``), added up at the end.
* Several rows (prefill, batches) are a GEMM: outputs are cut into panels of a few vectors' columns;
  each thread dequantizes (or, for a float [N, K] weight, transposes) one [K, panel] slice of the
  weight into a scratch buffer, then runs a register tile of rows x panel columns over
  it, each weight vector loaded once for all rows of the tile.
* Outputs (panels / column tiles) are split across threads, and the epilogue runs right where each
  tile of outputs is finished, vectorised, instead of as separate passes over memory.

On a CPU with AVX-512 VNNI, q4f16_0's matmuls are not scheduled here but replaced before fusion by
:mod:`.int8_dot_matmul` (4-bit codes times 8-bit activation digits); only their fused epilogue is placed
here.  The vector width follows the target's ISA (AVX-512: 16 float32 lanes, AVX2: 8), read from the
target at build time: a host library runs on the machine it was built for.  Anything else is left
as it is, and a kernel the schedule cannot handle stays unscheduled (correct, just slow): every
step is checked by TVM, and a refusal only skips the function.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from . import int8_dot_matmul
from .rewrite import rewrite_prim_funcs

_MATMUL_BLOCK = "matmul"  # the reduction block of hf2mlc's matmul TE (quantization/nn.py)
_DEQUANTIZE_BLOCK = "dequantize"
_get_sblock_realize = tvm.get_global_func("s_tir.schedule.GetSBlockRealize")
_REDUCE = 2  # IterVar.CommReduce
_GEMV_VECTORS = 4  # vectors of outputs per GEMV tile of a [K, N] weight: 4 independent FMA chains
#: GEMM register tile (vectors of outputs, input rows) per vector register file: AVX-512's 32
#: registers hold 6 x 4 accumulators plus 4 weight vectors and a broadcast input; 16 registers
#: (AVX2, NEON) hold 4 x 2.  Each weight vector loaded serves every row of the tile.
_GEMM_TILE = {16: (4, 6)}
_GEMM_TILE_DEFAULT = (2, 4)
_TRANSPOSE_BLOCK = 16  # k values per output copied together when an [N, K] weight slice is transposed


def float32_lanes(target: tvm.target.Target | None) -> int:
    """float32 lanes of the widest vector unit the target's CPU has (AVX-512, AVX2, else SSE/NEON)."""
    if target is None or target.kind.name != "llvm":
        return 4
    has = tvm.target.codegen.target_has_features
    if has("avx512f", target):
        return 16
    if has("avx2", target):
        return 8
    return 4


def _block_named(sch: s_tir.Schedule, name: str) -> s_tir.schedule.SBlockRV | None:
    try:
        return sch.get_sblock(name)
    except (s_tir.ScheduleError, ValueError, RuntimeError):
        return None


def _weight_is_k_contiguous(block: s_tir.SBlock) -> bool | None:
    """Whether the matmul reads its weight (the operand indexed by the output column ``n`` and the
    reduction ``k``) with ``k`` as the last, contiguous index ([N, K]) or not ([K, N])."""
    spatial = [iv.var for iv in block.iter_vars if iv.iter_type != _REDUCE]
    reduce = [iv.var for iv in block.iter_vars if iv.iter_type == _REDUCE]
    if not spatial or len(reduce) != 1:
        return None
    n_var, k_var = spatial[-1], reduce[0]
    region = _weight_region(block, n_var, k_var)
    return None if region is None else _uses(region[1][1], k_var)


def _weight_region(block: s_tir.SBlock, n_var: tirx.Var, k_var: tirx.Var) -> tuple[int, list] | None:
    """(read index, dims) of the 2-D operand indexed by both ``n`` and ``k``: the weight."""
    for index, region in enumerate(block.reads):
        dims = [d.min for d in region.region]
        if len(dims) == 2 and any(_uses(d, n_var) for d in dims) and any(_uses(d, k_var) for d in dims):
            return index, dims
    return None


def _uses(expr: tirx.Expr, var: tirx.Var) -> bool:
    return any(v.same_as(var) for v in _vars(expr))


def _vars(expr: tirx.Expr) -> list[tirx.Var]:
    if isinstance(expr, tirx.Var):
        return [expr]
    found: list[tirx.Var] = []
    for field in ("a", "b", "value"):
        child = getattr(expr, field, None)
        if isinstance(child, tirx.Expr):
            found += _vars(child)
    return found


def _values_per_word(block: s_tir.SBlock) -> int:
    """Quantized values per packed word, read off the dequantize block's ``q_weight[k // e, ...]``
    (or ``[..., k // e]``) index: the smallest constant divisor of a reduction-axis index."""
    divisors = [
        int(dim.min.b.value)
        for region in block.reads
        if "int" in str(region.source.ty.dtype)
        for dim in region.region
        if isinstance(dim.min, tirx.FloorDiv) and isinstance(dim.min.b, tirx.IntImm)
    ]
    return min(divisors) if divisors else 1


def _static_rows(sch: s_tir.Schedule, matmul: s_tir.schedule.SBlockRV) -> int | None:
    """Static number of input rows of the matmul (None when it depends on the sequence length)."""
    extent = 1
    for loop in sch.get_loops(matmul)[:-2]:
        loop_extent = sch.get(loop).extent
        if not isinstance(loop_extent, tirx.IntImm):
            return None
        extent *= int(loop_extent.value)
    return extent


def _epilogue(sch: s_tir.Schedule, matmul: s_tir.schedule.SBlockRV) -> s_tir.schedule.SBlockRV | None:
    """Fold the elementwise blocks after the matmul (cast, bias, GELU, residual add) into the last
    one, so they run as one pass; return that block (None when the matmul writes the output)."""
    consumers = sch.get_consumers(matmul)
    last = None
    while len(consumers) == 1:
        block = consumers[0]
        following = sch.get_consumers(block)
        if not following:
            last = block
            break
        sch.compute_inline(block)
        consumers = sch.get_consumers(matmul)
    return last


def _finish_epilogue(sch: s_tir.Schedule, epilogue: s_tir.schedule.SBlockRV | None, loop, lanes: int) -> None:
    """Run the epilogue for the outputs finished under ``loop``, vectorised along the outputs."""
    if epilogue is None:
        return
    sch.reverse_compute_at(epilogue, loop)
    inner = sch.get_loops(epilogue)[-1]
    extent = sch.get(inner).extent
    if isinstance(extent, tirx.IntImm) and int(extent.value) % lanes == 0:
        _, vec = sch.split(inner, [None, lanes])
        sch.vectorize(vec)


def _gemv_kn(sch: s_tir.Schedule, matmul, epilogue, lanes: int, per_word: int) -> None:
    """One row, weight [K, N]: vectors across outputs, the packed word's values unrolled."""
    deq = _block_named(sch, _DEQUANTIZE_BLOCK)
    if deq is not None:
        sch.compute_inline(deq)
    *batch, n, k = sch.get_loops(matmul)
    n_o, n_v = sch.split(n, [None, lanes * _GEMV_VECTORS])
    k_extent = sch.get(k).extent
    k_split = per_word > 1 and isinstance(k_extent, tirx.IntImm) and int(k_extent.value) % per_word == 0
    k_o, k_w = sch.split(k, [None, per_word]) if k_split else (k, None)
    sch.reorder(n_o, *batch, k_o, *([k_w] if k_w is not None else []), n_v)
    sch.parallel(n_o)
    acc = sch.cache_write(matmul, 0, "local")
    sch.reverse_compute_at(acc, n_o)
    sch.vectorize(n_v)
    sch.decompose_reduction(matmul, k_o)
    if k_w is not None:
        sch.unroll(k_w)
    sch.vectorize(sch.get_loops(acc)[-1])
    _finish_epilogue(sch, epilogue, n_o, lanes)


def _gemv_nk(sch: s_tir.Schedule, matmul, epilogue, lanes: int) -> None:
    """One row, weight [N, K]: a vector of partial sums along ``k`` per output, added up last.

    Inner loops are vectorised *before* the reduction's init is split off: afterwards TVM refuses
    to vectorise a loop nested in the reduction loop ("compact dataflow")."""
    deq = _block_named(sch, _DEQUANTIZE_BLOCK)
    if deq is not None:
        sch.compute_inline(deq)
    *_, k = sch.get_loops(matmul)
    _, k_vec = sch.split(k, [None, lanes])
    # partial[..., n, k_lane]: a vector of partial sums per output, computed right where the output
    # is summed up (compute_at), so it never exceeds one vector per thread
    partial = sch.rfactor(k_vec, factor_axis=len(sch.get(matmul).writes[0].region))
    *batch, n_f, lane_f = sch.get_loops(matmul)
    sch.reorder(n_f, *batch, lane_f)
    n_o, n_i = sch.split(n_f, [None, lanes])
    sch.parallel(n_o)
    sch.compute_at(partial, n_i)
    k_outer, k_lane = _reduction_then_spatial(sch, partial)
    sch.set_scope(partial, 0, "local")
    sch.vectorize(k_lane)
    sch.decompose_reduction(partial, k_outer)
    _finish_epilogue(sch, epilogue, n_o, lanes)


def _gemm(sch: s_tir.Schedule, matmul, epilogue, lanes: int, k_contiguous: bool, per_word: int) -> None:
    """Several rows: per panel of outputs, a [K, panel] weight slice in scratch memory (dequantized
    or transposed once), then register tiles of rows x panel columns over it."""
    vectors, rows = _GEMM_TILE.get(lanes, _GEMM_TILE_DEFAULT)
    panel = lanes * vectors
    deq = _block_named(sch, _DEQUANTIZE_BLOCK)
    block = sch.get(matmul)
    n_var = [iv.var for iv in block.iter_vars if iv.iter_type != _REDUCE][-1]
    k_var = [iv.var for iv in block.iter_vars if iv.iter_type == _REDUCE][0]
    if deq is None:
        # a float weight: copy the [K, panel] slice once per panel, transposed when stored [N, K]
        weight_index, _ = _weight_region(block, n_var, k_var)
        deq = sch.cache_read(matmul, weight_index, "global")
    if k_contiguous:
        sch.transform_layout(deq, ("write", 0), lambda n, k: (k, n))
    # rows padded to whole tiles: a guard per row would keep the accumulators out of registers
    sch.pad_einsum(matmul, [*([1] * (len(block.iter_vars) - 3)), rows, 1, 1])
    (unpad,) = sch.get_consumers(matmul)  # copies the padded result back: fold it into the epilogue
    if epilogue is None:
        epilogue = unpad
    else:
        sch.compute_inline(unpad)
    *batch, n, k = sch.get_loops(matmul)
    m = sch.fuse(*batch) if len(batch) > 1 else batch[0]
    n_o, n_v = sch.split(n, [None, panel])
    m_o, m_i = sch.split(m, [None, rows])
    sch.reorder(n_o, m_o, k, m_i, n_v)
    sch.parallel(n_o)
    acc = sch.cache_write(matmul, 0, "local")
    sch.reverse_compute_at(acc, m_o)
    sch.vectorize(n_v)
    sch.decompose_reduction(matmul, k)
    sch.unroll(m_i)
    sch.vectorize(sch.get_loops(acc)[-1])
    sch.compute_at(deq, n_o)
    deq_loops = sch.get_loops(deq)
    outer, inner = deq_loops[-2], deq_loops[-1]
    if k_contiguous:
        # transposing an [N, K] slice: blocks of k read contiguously per output, written to as many
        # rows of the slice (unrolled, so a packed word is loaded once and its shifts are constants)
        k_o, k_i = sch.split(inner, [None, _TRANSPOSE_BLOCK])
        sch.reorder(k_o, outer, k_i)
        sch.unroll(k_i)
    else:
        # [K, N] slice: vectors along the outputs; a packed word's values unrolled (constant shifts)
        sch.vectorize(inner)
        extent = sch.get(outer).extent
        if per_word > 1 and isinstance(extent, tirx.IntImm) and int(extent.value) % per_word == 0:
            _, k_w = sch.split(outer, [None, per_word])
            sch.unroll(k_w)
    _finish_epilogue(sch, epilogue, m_o, lanes)


def _reduction_then_spatial(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> tuple:
    """The rfactor block's two innermost loops, reordered as (reduction k_outer, spatial k_lane)."""
    first, second = sch.get_loops(block)[-2:]
    realize = _get_sblock_realize(sch, block)
    reduce_bindings = [
        value for iv, value in zip(realize.block.iter_vars, realize.iter_values) if iv.iter_type == _REDUCE
    ]
    first_var = sch.get(first).loop_var
    if not any(var.same_as(first_var) for value in reduce_bindings for var in _vars(value)):
        sch.reorder(second, first)
        first, second = second, first
    return first, second


def _int8_dot_epilogue(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> None:
    """The int8-dot kernel (:mod:`.int8_dot_matmul`) is written scheduled; only the epilogue fused after
    it is placed: per parallel slice of outputs, right after the slice is finished, vectorised."""
    epilogue = _epilogue(sch, block)
    _finish_epilogue(sch, epilogue, sch.get_loops(block)[-1], lanes)


def schedule_cpu_matmul(func: tirx.PrimFunc, target: tvm.target.Target | None = None) -> tirx.PrimFunc | None:
    """The scheduled function, or None when ``func`` is not a matmul kernel this schedule handles."""
    sch = s_tir.Schedule(func)
    if target is None:
        target = func.attrs.get("target") if func.attrs else None
        target = target or tvm.target.Target.current(allow_none=True)
    int8_dot = _block_named(sch, int8_dot_matmul.BLOCK)
    if int8_dot is not None:
        try:
            _int8_dot_epilogue(sch, int8_dot, float32_lanes(target))
        except (s_tir.ScheduleError, ValueError, RuntimeError):  # the epilogue stays a plain loop nest
            sch = s_tir.Schedule(func)
        return sch.mod["main"].with_attr("tirx.is_scheduled", True)
    block = _block_named(sch, _MATMUL_BLOCK)
    if block is None:
        return None
    k_contiguous = _weight_is_k_contiguous(sch.get(block))
    if k_contiguous is None:
        return None
    lanes = float32_lanes(target)
    deq = _block_named(sch, _DEQUANTIZE_BLOCK)
    per_word = _values_per_word(sch.get(deq)) if deq is not None else 1
    try:
        epilogue = _epilogue(sch, block)
        if _static_rows(sch, block) == 1:
            if k_contiguous:
                _gemv_nk(sch, block, epilogue, lanes)
            else:
                _gemv_kn(sch, block, epilogue, lanes, per_word)
        else:
            _gemm(sch, block, epilogue, lanes, k_contiguous, per_word)
    except (s_tir.ScheduleError, ValueError, RuntimeError):  # any refusal: leave the kernel unscheduled
        return None
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


@tvm.transform.module_pass(opt_level=0, name="ScheduleCPUMatmul")
class ScheduleCPUMatmul:
    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        def rewrite(_g_var: tvm.ir.GlobalVar, func: tirx.PrimFunc) -> tirx.PrimFunc | None:
            if func.attrs and func.attrs.get("tirx.is_scheduled", False):
                return None
            return schedule_cpu_matmul(func)

        return rewrite_prim_funcs(mod, rewrite)
