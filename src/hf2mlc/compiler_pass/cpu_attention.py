"""apache-tvm's CPU attention kernels of the paged KV cache, run on every core.

``TIRPagedKVCache`` gives an ``llvm`` target scalar kernels (``batch_prefill_ragged_kv``,
``batch_prefill_paged_kv_cpu``, ``batch_decode_paged_kv_cpu``, ...) that run one thread: a block
``attn`` allocates its scratch (running max, sums, one row of scores) once, then loops over query rows
(prefill) or heads (decode).  Those iterations are independent (each writes its own rows of ``output``
and ``lse``, and every scratch value is written before it is read within one iteration), so this pass
moves the scratch that only the loop uses into a block inside it (one copy per iteration, hence per
thread) and makes the loop parallel.  The kernels' ``rotary_mode`` argument is fixed first to what the
model's KV cache passes (apache-tvm's runtime passes ``rope_mode == kInline``; hf2mlc applies RoPE
before the cache, so 0): the dead inline-RoPE branch holds float ``Let`` expressions that apache-tvm's
CPU codegen cannot capture into a parallel closure.  Scratch the block also uses before the loop (the decode's
``kv_chunk_len``) stays shared: it is only read inside.  On the 3.6B model attention took 14 % of a
32-token prefill and 12 % of a decode step on one core; 256-token evaluation windows spend as long in
attention as in the matmuls.  A kernel of another shape is left as it is.
"""

from __future__ import annotations

import re

import tvm
from tvm import s_tir, tirx

from .rewrite import rewrite_prim_funcs

_BLOCK = "attn"


def _find_attn(stmt: tirx.Stmt, path: list[tirx.Stmt]) -> s_tir.SBlock | None:
    """The ``attn`` block under ``stmt`` through For loops and block realizations only (the path kept)."""
    path.append(stmt)
    if isinstance(stmt, s_tir.SBlockRealize):
        return _find_attn(stmt.block, path)
    if isinstance(stmt, s_tir.SBlock):
        if stmt.name_hint == _BLOCK:
            return stmt
        return _find_attn(stmt.body, path)
    if isinstance(stmt, tirx.For):
        return _find_attn(stmt.body, path)
    path.pop()
    return None


def _mentions(stmt: tirx.Stmt, name: str) -> bool:
    # the statement's TVMScript text: a buffer is read or written as ``name[`` (kernel-local names are unique)
    return re.search(rf"(?<![\w.]){re.escape(name)}\[", str(stmt)) is not None


def _rebuild(path: list[tirx.Stmt], new_leaf: tirx.Stmt) -> tirx.Stmt:
    """``path`` (root first) with its last node replaced by ``new_leaf``, every node above rebuilt."""
    node = new_leaf
    for parent in reversed(path[:-1]):
        if isinstance(parent, s_tir.SBlockRealize):
            node = s_tir.SBlockRealize(parent.iter_values, parent.predicate, node)
        elif isinstance(parent, s_tir.SBlock):
            node = _with_body(parent, node, parent.alloc_buffers)
        else:  # For
            node = tirx.For(parent.loop_var, parent.min, parent.extent, parent.kind, node, parent.thread_binding, parent.annotations)
    return node


def _with_body(block: s_tir.SBlock, body: tirx.Stmt, alloc_buffers) -> s_tir.SBlock:
    return s_tir.SBlock(
        block.iter_vars, block.reads, block.writes, block.name_hint, body, block.init, list(alloc_buffers),
        block.match_buffers, block.annotations,
    )


def parallel_attention(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """``func`` with its ``attn`` block's row (or head) loop parallel, or None when it has no such shape."""
    path: list[tirx.Stmt] = []
    attn = _find_attn(func.body, path)
    if attn is None or not attn.alloc_buffers:
        return None
    body = attn.body
    before = list(body.seq[:-1]) if isinstance(body, tirx.SeqStmt) else []
    loop = body.seq[-1] if isinstance(body, tirx.SeqStmt) else body
    if not isinstance(loop, tirx.For) or loop.kind != tirx.ForKind.SERIAL:
        return None
    shared = [buf for buf in attn.alloc_buffers if any(_mentions(stmt, buf.name) for stmt in before)]
    private = [buf for buf in attn.alloc_buffers if buf not in shared]
    if not private:
        return None
    row = s_tir.SBlock([], [], [], f"{_BLOCK}_row", loop.body, None, private)
    parallel = tirx.For(
        loop.loop_var, loop.min, loop.extent, tirx.ForKind.PARALLEL, s_tir.SBlockRealize([], True, row), None, loop.annotations
    )
    new_body = tirx.SeqStmt([*before, parallel]) if before else parallel
    return func.with_body(_rebuild(path, _with_body(attn, new_body, shared)))


def fix_rotary_mode(func: tirx.PrimFunc, rotary_mode: int) -> tirx.PrimFunc:
    """``func`` with its ``rotary_mode`` argument's uses replaced by the value the runtime passes
    (the argument stays, unused, so the calling convention is unchanged) and the dead branch folded."""
    param = next((p for p in func.params if getattr(p, "name", "") == "rotary_mode"), None)
    if param is None:
        return func
    fixed = func.specialize({param: tirx.IntImm(str(param.ty.dtype), rotary_mode)})
    kept = tirx.PrimFunc(func.params, fixed.body, func.ret_type, func.attrs)
    return tvm.tirx.transform.StmtSimplify()(tvm.IRModule({"main": kept}))["main"]


def ParallelCPUAttention(*, inline_rope: bool) -> tvm.transform.Pass:  # noqa: N802
    """The pass over a module: every KV-cache attention kernel of the shape above made parallel."""

    @tvm.transform.module_pass(opt_level=0, name="ParallelCPUAttention")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        def rewrite(_g_var: tvm.ir.GlobalVar, func: tirx.PrimFunc) -> tirx.PrimFunc | None:
            if _find_attn(func.body, []) is None:
                return None
            return parallel_attention(fix_rotary_mode(func, int(inline_rope)))

        return rewrite_prim_funcs(mod, rewrite)

    return _pass
