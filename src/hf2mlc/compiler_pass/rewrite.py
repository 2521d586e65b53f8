"""One way to rewrite a module's PrimFuncs one by one (the CPU kernels' passes all do it)."""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import tirx


def rewrite_prim_funcs(
    mod: tvm.IRModule, rewrite: Callable[[tvm.ir.GlobalVar, tirx.PrimFunc], tirx.PrimFunc | None]
) -> tvm.IRModule:
    """``mod`` with every PrimFunc for which ``rewrite`` returns a function replaced by it (None: kept)."""
    updates = {}
    for g_var, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            new = rewrite(g_var, func)
            if new is not None:
                updates[g_var] = new
    for g_var, func in updates.items():
        mod[g_var] = func
    return mod
