"""Passes that attach what MLC's engine reads from a model library besides the kernels.

* :class:`AttachVariableBounds` gives each function upper bounds of its symbolic sizes (tokens in one
  forward pass ``seq_len`` <= prefill chunk, ``total_seq_len`` <= context window, ``batch_size``):
  memory planning then allocates every activation once, at its largest size, instead of per call.
  It also makes the bounds binding: a runtime must never pass more tokens per call than the chunk.
* :class:`AttachMetadata` adds ``_metadata()``: a function returning the JSON the engine parses
  (cpp/metadata/model.cc in MLC), completed with ``memory_usage``: bytes of planned activation
  memory per function, which MLC uses to size the KV cache, and checked for ``active_vocab_size``:
  the tokens the sampler may draw (MLC's engine takes it from mlc-chat-config.json, which the package
  stage copies from here, so the library is where it is decided).
"""

from __future__ import annotations

import json
from typing import Any

import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprVisitor, visitor

METADATA_FUNCTION = "_metadata"


@tvm.transform.module_pass(opt_level=0, name="AttachVariableBounds")
class AttachVariableBounds:
    def __init__(self, bounds: dict[str, int]) -> None:
        self.bounds = {name: int(value) for name, value in bounds.items() if value > 0}

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for g_var, func in mod.functions_items():
            if isinstance(func, relax.Function):
                func = func.with_attr("tir_var_upper_bound", self.bounds)
                func = func.with_attr("tir_non_negative_var", ["vocab_size"])
                # Let planning cover returned tensors too (logits), as MLC's pipeline does.
                mod[g_var] = func.with_attr("relax.memory_plan_dynamic_func_output", True)
        return mod


@visitor
class _PlannedBytes(PyExprVisitor):
    """Sums the statically sized allocations of one function (after StaticPlanBlockMemory)."""

    def __init__(self) -> None:
        self.total = 0
        self._alloc_storage = tvm.ir.Op.get("relax.memory.alloc_storage")
        self._alloc_tensor = tvm.ir.Op.get("relax.builtin.alloc_tensor")

    def visit_call_(self, call: relax.Call) -> None:
        if call.op == self._alloc_storage:
            size = call.args[0]
            if isinstance(size, relax.ShapeExpr) and isinstance(size.values[0], tirx.IntImm):
                self.total += int(size.values[0].value)
        elif call.op == self._alloc_tensor:
            shape = call.args[0]
            if isinstance(shape, relax.ShapeExpr) and all(isinstance(d, tirx.IntImm) for d in shape.values):
                dtype = tvm.DataType(call.args[1].value)
                count = 1
                for d in shape.values:
                    count *= int(d.value)
                self.total += count * ((dtype.bits + 7) // 8) * dtype.lanes
        super().visit_call_(call)


def planned_memory(mod: tvm.IRModule) -> dict[str, int]:
    usage: dict[str, int] = {}
    for g_var, func in mod.functions_items():
        if isinstance(func, relax.Function):
            counter = _PlannedBytes()
            counter.visit_expr(func)
            usage[g_var.name_hint] = counter.total
    return usage


@tvm.transform.module_pass(opt_level=0, name="AttachMetadata")
class AttachMetadata:
    """Adds ``_metadata()``; run it right after memory planning so that the usage is known."""

    def __init__(self, metadata: dict[str, Any]) -> None:
        self.metadata = metadata

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        active = self.metadata.get("active_vocab_size")
        if not isinstance(active, int) or active <= 0:
            raise ValueError(f"_metadata needs a positive active_vocab_size, got {active!r}")
        self.metadata["memory_usage"] = planned_memory(mod)
        bb = relax.BlockBuilder()
        with bb.function(METADATA_FUNCTION, params=[]):
            bb.emit_func_output(tvm.ir.StringImm(json.dumps(self.metadata, sort_keys=True)))
        mod[METADATA_FUNCTION] = bb.finalize()[METADATA_FUNCTION]
        return mod
