"""Rewrite ``matmul(x, permute_dims(W))`` of a float Linear into one "NT" matmul kernel.

``nn.Linear`` stores ``W`` as [out, in] and multiplies by its transpose.  Lowered as written, every
call would first materialise the transposed weight (a full copy of every weight, every token); the
fusion pass never fuses a producer into a matmul's input.  Reading ``W`` in place with an NT matmul
removes that copy.  Group-quantized Linears never reach this pass: they are already one
dequantize-matmul function (:mod:`hf2mlc.quantization.nn`).
"""

from __future__ import annotations

import tvm
from tvm import relax, te
from tvm.relax.analysis import remove_all_unused
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..quantization.nn import matmul_accumulating_in_float32

_MATMUL = tvm.ir.Op.get("relax.matmul")
_PERMUTE = tvm.ir.Op.get("relax.permute_dims")


def _nt_matmul(x: te.Tensor, w: te.Tensor, out_dtype: str) -> te.Tensor:
    """``out[..., n] = sum_k x[..., k] * w[n, k]``, summed in float32 like the quantized Linear."""
    return matmul_accumulating_in_float32(x, lambda n, k: w[n, k], w.shape[1], w.shape[0], out_dtype)


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.mod = mod

    def run(self) -> tvm.IRModule:
        for g_var, func in self.mod.functions_items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(g_var, remove_all_unused(self.visit_expr(func)))
        return self.builder_.get()

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if call.op != _MATMUL or not isinstance(call.args[1], relax.Var):
            return call
        rhs = self.lookup_binding(call.args[1])
        if (
            not isinstance(rhs, relax.Call)
            or rhs.op != _PERMUTE
            or rhs.args[0].ty.ndim != 2
            or rhs.attrs.axes is not None
        ):
            return call
        out_dtype = str(call.ty.dtype)
        return self.builder_.call_te(_nt_matmul, call.args[0], rhs.args[0], out_dtype, primfunc_name_hint="NT_matmul")


@tvm.transform.module_pass(opt_level=0, name="FuseTransposeMatmul")
class FuseTransposeMatmul:
    """The pass (run before legalization, on relax-level matmul/permute_dims)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return _Rewriter(mod).run()
