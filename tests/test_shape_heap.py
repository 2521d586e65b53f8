"""The shape functions' store order (hf2mlc.compiler_pass.shape_heap): fixed, and still right.

apache-tvm's VMShapeLower orders the stores of a shape function by the address of the symbolic variable
they use, so a fresh copy of the same module (new objects, new addresses) gets another order; that made
two builds of the same model give different library bytes.  Each test below lowers many fresh copies in
one process, which gives the variables many different addresses.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import relax as R
from tvm.script import tirx as T

from hf2mlc.compiler_pass.shape_heap import OrderShapeHeapStores

COPIES = 20


def _fresh_module() -> tvm.IRModule:
    """A function whose returned shape derives five sizes from one variable (two of them equal, as the
    model's ``seq_len * 4`` and ``4 * seq_len``), parsed anew each call."""

    @tvm.script.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor(("n",), "float32")) -> R.Shape(ndim=5):
            n = T.int64()
            return R.shape([n + 1, n + 2, n * 4, 4 * n, n // 2])

    return Module


def _stored_slots(func: tvm.tirx.PrimFunc) -> list[int]:
    return [int(stmt.indices[0].value) for stmt in func.body.seq]


def test_vm_shape_lower_alone_still_varies_the_store_order():
    # If a TVM upgrade makes VMShapeLower deterministic, OrderShapeHeapStores can go.
    orders = {tuple(_stored_slots(relax.transform.VMShapeLower()(_fresh_module())["shape_func"])) for _ in range(COPIES)}
    assert len(orders) > 1


def test_shape_function_stores_come_in_slot_order():
    lowered = [OrderShapeHeapStores()(relax.transform.VMShapeLower()(_fresh_module())) for _ in range(COPIES)]
    assert len({mod["shape_func"].script() for mod in lowered}) == 1
    slots = _stored_slots(lowered[0]["shape_func"])
    assert slots == sorted(slots) and len(slots) == 5


def test_ordered_shape_function_computes_the_sizes():
    mod = relax.transform.VMShapeLower()(_fresh_module())
    mod = relax.transform.AttachGlobalSymbol()(OrderShapeHeapStores()(mod))
    vm = relax.VirtualMachine(relax.build(mod, target="llvm", relax_pipeline=None), tvm.cpu())
    for n in (1, 7, 1000):
        shape = vm["main"](tvm.runtime.tensor(np.zeros(n, dtype="float32")))
        assert [int(v) for v in shape] == [n + 1, n + 2, n * 4, 4 * n, n // 2]


@T.prim_func(s_tir=True)
def _dependent(H: T.Buffer((T.int64(4),), "int64")):
    T.func_attr({"tirx.is_host_func": True})
    H[T.int64(3)] = H[T.int64(0)] * T.int64(2)
    H[T.int64(2)] = H[T.int64(3)] + T.int64(1)


@T.prim_func(s_tir=True)
def _independent(H: T.Buffer((T.int64(4),), "int64")):
    T.func_attr({"tirx.is_host_func": True})
    H[T.int64(3)] = H[T.int64(0)] * T.int64(2)
    H[T.int64(2)] = T.max(H[T.int64(1)], T.int64(1))


@pytest.mark.parametrize(("func", "slots"), [(_dependent, [3, 2]), (_independent, [2, 3])])
def test_only_independent_stores_are_reordered(func, slots):
    # H[2] reads H[3]: moving it first would read a stale slot.
    out = OrderShapeHeapStores()(tvm.IRModule({"shape_func": func}))
    assert _stored_slots(out["shape_func"]) == slots
