"""A CPU schedule for the model's matmuls, so that host builds run at a usable speed.

Host libraries exist to check the model (logits against transformers, perplexity of the LINE model),
which means billions of multiply-adds per token.  Left unscheduled, LLVM gets scalar loops whose
innermost reduction walks a weight column with a stride (about 1 GFLOP/s here); dlight's CPU GEMV
rule is no help (it makes LLVM spend minutes on one tiny kernel).  This pass schedules exactly the
kernels that carry the work: a function with one ``matmul`` reduction block (hf2mlc's float
Linear, and the dequantize-matmul of a quantized Linear), plus its dequantize prologue.

* weight laid out [K, N] (KN quantized): vectorise across outputs ``n``, reduction loop outside;
* weight laid out [N, K] (float and NK quantized): split the reduction, accumulate vectors of
  partial sums along ``k`` (``rfactor``), then add them up;
* outputs are split across threads; a quantized weight is dequantized inside the loads for a
  single row (decode), and written once per call, in parallel, for several rows (prefill).

Anything else is left as it is, and a kernel the schedule cannot handle stays unscheduled (correct,
just slow): every step is checked by TVM, and a refusal only skips the function.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

_MATMUL_BLOCK = "matmul"  # the reduction block of hf2mlc's matmul TE (quantization/nn.py)
_get_sblock_realize = tvm.get_global_func("s_tir.schedule.GetSBlockRealize")
_VECTOR = 16  # float32 lanes of AVX-512; LLVM splits wider-than-native vectors itself
_COLUMNS = 32  # outputs per tile of a [K, N] weight: one 64-byte line of float16 weights per k
_ROWS = 4  # input rows that share each loaded weight vector
_REDUCE = 2  # IterVar.CommReduce


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

    def uses(dim, var) -> bool:
        return any(v.same_as(var) for v in _vars(dim.min))

    for region in block.reads:
        dims = region.region
        if len(dims) == 2 and any(uses(d, n_var) for d in dims) and any(uses(d, k_var) for d in dims):
            return uses(dims[1], k_var)
    return None


def _vars(expr: tirx.Expr) -> list[tirx.Var]:
    if isinstance(expr, tirx.Var):
        return [expr]
    found: list[tirx.Var] = []
    for field in ("a", "b", "value"):
        child = getattr(expr, field, None)
        if isinstance(child, tirx.Expr):
            found += _vars(child)
    return found


def _rows(sch: s_tir.Schedule, matmul: s_tir.schedule.SBlockRV) -> int | None:
    """Static number of input rows of the matmul (None when it depends on the sequence length)."""
    extent = 1
    for loop in sch.get_loops(matmul)[:-2]:
        loop_extent = sch.get(loop).extent
        if not isinstance(loop_extent, tirx.IntImm):
            return None
        extent *= int(loop_extent.value)
    return extent


def _schedule_dequantize(sch: s_tir.Schedule, matmul: s_tir.schedule.SBlockRV) -> None:
    """One input row (decode): dequantize inside the matmul's loads, reading each packed word once.
    Several rows (prefill): write the dequantized weight once, in parallel, and reuse it per row."""
    block = _block_named(sch, "dequantize")
    if block is None:
        return
    if _rows(sch, matmul) == 1:
        sch.compute_inline(block)
        return
    outer, inner = sch.get_loops(block)
    sch.parallel(outer)
    _, vec = sch.split(inner, [None, _VECTOR])
    sch.vectorize(vec)


def _schedule_matmul(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, k_contiguous: bool) -> None:
    """Inner loops are vectorised *before* the reduction's init is split off: afterwards TVM refuses
    to vectorise a loop nested in the reduction loop ("compact dataflow"), and leaving such loops to
    LLVM's vectorizers proved fragile (it depends on alias analysis through TVM's parallel closure:
    one whole model library ran 15x slower than the same kernel compiled alone)."""
    *batch, n, k = sch.get_loops(block)
    m = sch.fuse(*batch) if len(batch) > 1 else batch[0]
    if not k_contiguous:
        # Register blocking: each weight vector loaded is used for _ROWS input rows; a local
        # accumulator of _ROWS x _COLUMNS outputs is stored once per block of rows.
        n_outer, n_vec = sch.split(n, [None, _COLUMNS])
        single_row = _rows(sch, block) == 1
        m_outer, m_inner = (m, None) if single_row else sch.split(m, [None, _ROWS])
        sch.reorder(n_outer, m_outer, k, *([] if single_row else [m_inner]), n_vec)
        sch.parallel(n_outer)
        acc = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(acc, m_outer)
        sch.vectorize(n_vec)
        sch.decompose_reduction(block, k)
        sch.vectorize(sch.get_loops(acc)[-1])
        if m_inner is not None:
            sch.unroll(m_inner)
        return
    _, k_vec = sch.split(k, [None, _VECTOR])
    # partial[..., n, k_lane]: a vector of partial sums per output, computed right where the output
    # is summed up (compute_at), so it never exceeds one vector per thread
    partial = sch.rfactor(k_vec, factor_axis=len(sch.get(block).writes[0].region))
    *_, m_f, n_f, lane_f = sch.get_loops(block)
    sch.reorder(n_f, m_f, lane_f)
    sch.parallel(n_f)
    sch.compute_at(partial, m_f)
    k_outer, k_lane = _reduction_then_spatial(sch, partial)
    sch.set_scope(partial, 0, "local")
    sch.vectorize(k_lane)
    sch.decompose_reduction(partial, k_outer)


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


def schedule_cpu_matmul(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """The scheduled function, or None when ``func`` is not a matmul kernel this schedule handles."""
    sch = s_tir.Schedule(func)
    block = _block_named(sch, _MATMUL_BLOCK)
    if block is None:
        return None
    k_contiguous = _weight_is_k_contiguous(sch.get(block))
    if k_contiguous is None:
        return None
    try:
        _schedule_dequantize(sch, block)
        _schedule_matmul(sch, block, k_contiguous)
    except (s_tir.ScheduleError, ValueError, RuntimeError):  # any refusal: leave the kernel unscheduled
        return None
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


@tvm.transform.module_pass(opt_level=0, name="ScheduleCPUMatmul")
class ScheduleCPUMatmul:
    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for g_var, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and not (func.attrs and func.attrs.get("tirx.is_scheduled", False)):
                scheduled = schedule_cpu_matmul(func)
                if scheduled is not None:
                    updates[g_var] = scheduled
        for g_var, func in updates.items():
            mod[g_var] = func
        return mod
