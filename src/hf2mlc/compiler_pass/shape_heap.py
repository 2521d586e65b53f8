"""Shape functions in a fixed order, so that two builds of the same model give the same library bytes.

``relax.transform.VMShapeLower`` computes a Relax function's symbolic sizes (``seq_len * 4``, ``4 * seq_len``,
``total_seq_len + 1`` …) in small host functions (``shape_func*``) that read the matched variables from the
VM's shape heap ``H`` and store each derived size back into its own slot.  apache-tvm 0.27 orders those
stores by iterating a C++ ``std::unordered_map`` keyed by the expressions' structural hash, and the hash of
a free variable is its address: the order changes from process to process (memory layout, ASLR), the
generated code with it, and so the library's bytes and its linker build id (a hash of its contents).

The stores are independent (each derived size reads only matched variables, never another derived size:
VMShapeLower computes a size only once all the variables it uses are known), so :class:`OrderShapeHeapStores`
sorts them by slot index, which VMShapeLower assigns in a fixed visiting order.  A host function of that
form whose stores do depend on each other, or whose values it cannot read, is left untouched.
"""

from __future__ import annotations

import tvm
from tvm import tirx


def _slot(indices: list) -> int | None:
    """The constant slot of a one-index heap access, else None."""
    if len(indices) != 1 or not isinstance(indices[0], tirx.IntImm):
        return None
    return int(indices[0].value)


def _loaded_slots(expr: tvm.ir.Expr, heap: tvm.ir.Var) -> set[int] | None:
    """The heap slots ``expr`` reads, or None when it holds anything this walk does not know (then the
    function keeps its order: a store moved past one it depends on would compute a wrong size)."""
    if isinstance(expr, tvm.ir.TensorLoad):
        slot = _slot(list(expr.indices)) if expr.source.same_as(heap) else None
        return None if slot is None else {slot}
    if isinstance(expr, tirx.IntImm | tirx.FloatImm | tvm.ir.Var):
        return set()
    if isinstance(expr, tirx.Cast):
        children = [expr.value]
    elif isinstance(expr, tirx.Select):
        children = [expr.condition, expr.true_value, expr.false_value]
    elif isinstance(expr, tvm.ir.Call):
        children = list(expr.args)
    elif hasattr(expr, "a") and hasattr(expr, "b"):  # the binary arithmetic and comparison nodes
        children = [expr.a, expr.b]
    else:
        return None
    slots: set[int] = set()
    for child in children:
        found = _loaded_slots(child, heap)
        if found is None:
            return None
        slots |= found
    return slots


def _slot_ordered(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """``func`` with its stores sorted by slot, when it is a shape function of independent stores that
    are out of order; None otherwise."""
    if len(func.params) != 1 or not isinstance(func.body, tirx.SeqStmt):
        return None
    (heap,) = func.params
    slots: list[int] = []
    reads: set[int] = set()
    for stmt in func.body.seq:
        if not isinstance(stmt, tirx.BufferStore) or not stmt.buffer.same_as(heap):
            return None
        slot, loaded = _slot(list(stmt.indices)), _loaded_slots(stmt.value, heap)
        if slot is None or loaded is None:
            return None
        slots.append(slot)
        reads |= loaded
    if reads & set(slots) or len(set(slots)) != len(slots):
        return None
    order = sorted(range(len(slots)), key=slots.__getitem__)
    if order == list(range(len(slots))):
        return None
    return func.with_body(tirx.SeqStmt([func.body.seq[i] for i in order]))


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="OrderShapeHeapStores")
class OrderShapeHeapStores:
    """Sort the stores of every shape function by slot index (run right after VMShapeLower)."""

    def transform_function(
        self, func: tirx.PrimFunc, _mod: tvm.IRModule, _ctx: tvm.transform.PassContext
    ) -> tirx.PrimFunc:
        if not (func.attrs and func.attrs.get("tirx.is_host_func", False)):
            return func
        ordered = _slot_ordered(func)
        return func if ordered is None else ordered
