"""GELU on CPU targets with apache-tvm's polynomial ``fast_erf`` instead of libm's ``erff``.

``erff`` is a scalar call, so the GELU fused after the MLP's first matmul cannot be vectorised and
took a sixth of a q4f16_0 prefill on the 3.6B model (185 of 1,110 ms for 32 tokens).  ``fast_erf`` is
a clamped rational polynomial (no calls, vectorises), within 1e-6 of ``erf`` in float32 (a test holds
it there), far below the float16 rounding of the activations it feeds.  GPU targets keep the stock
lowering: Metal's ``erf`` is already a vector instruction sequence.
"""

from __future__ import annotations

from tvm import relax, te, tirx, topi


def _gelu_fast_erf(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    def gelu(x: te.Tensor) -> te.Tensor:
        dtype = x.dtype
        inner = x * tirx.const(0.5**0.5, dtype)
        if dtype == "float16":  # erf in float32, as the stock lowering does
            erf = topi.cast(topi.fast_erf(topi.cast(inner, "float32")), "float16")
        else:
            erf = topi.fast_erf(inner)
        return x * (tirx.const(0.5, dtype) + erf * tirx.const(0.5, dtype))

    return bb.call_te(gelu, call.args[0], primfunc_name_hint="gelu")


#: ``customize_legalize_map`` for LegalizeOps on CPU targets.
CPU_LEGALIZE = {"relax.nn.gelu": _gelu_fast_erf}
