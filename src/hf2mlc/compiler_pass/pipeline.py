"""The Relax-to-VM pipeline for a model library: apache-tvm's standard lowering plus what MLC adds.

The order follows MLC LLM's ``mlc_llm`` pipeline where it matters for the ABI and for speed:
variable bounds before memory planning, NT matmuls before legalization, dlight schedules on GPU
targets (with the Metal workaround active during scheduling), and ``_metadata`` attached right after
memory planning so that it records the planned activation memory.  The shape functions VMShapeLower
writes get a fixed store order (:mod:`.shape_heap`), so that the same model gives the same library bytes.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax
from tvm.s_tir import dlight as dl

from ..quantization import Quantization
from .cpu_attention import ParallelCPUAttention
from .cpu_gelu import CPU_LEGALIZE
from .cpu_schedule import ScheduleCPUMatmul
from .engine_functions import AttachEngineFunctions
from .int8_dot_matmul import ReplaceDequantizeMatmul
from .metadata import AttachMetadata, AttachVariableBounds
from .metal_matmul import metal_matmul_disabled
from .shape_heap import OrderShapeHeapStores
from .transpose_matmul import FuseTransposeMatmul


def is_gpu(target: tvm.target.Target) -> bool:
    return target.kind.name != "llvm"


def _schedule(target: tvm.target.Target) -> tvm.transform.Pass:
    """dlight default schedules, so that every kernel on a GPU target gets thread bindings; on the
    CPU, hf2mlc's own matmul schedule (see :mod:`.cpu_schedule`; dlight's CPU GEMV rule, which MLC
    applies, made LLVM spend minutes on a single tiny kernel here)."""
    if is_gpu(target):
        return dl.ApplyDefaultSchedule(
            dl.gpu.Matmul(),
            dl.gpu.GEMV(),
            dl.gpu.Reduction(),
            dl.gpu.GeneralReduction(),
            dl.gpu.Fallback(),
        )
    return ScheduleCPUMatmul()


@tvm.transform.module_pass(opt_level=0, name="NarrowIndices")
class NarrowIndices:
    """32-bit index arithmetic in GPU kernels (cheaper on Apple GPUs), as MLC's pipeline does, kernel
    by kernel: TVM's GPU cumsum (used by top-p sampling) carries a 2**35 constant and is kept in
    64-bit instead of failing the build."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        narrow = tvm.tirx.transform.ForceNarrowIndexToInt32()
        updates = {}
        for g_var, func in mod.functions_items():
            if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_host_func", False)):
                continue
            try:
                updates[g_var] = narrow(tvm.IRModule({g_var: func}))[g_var]
            except tvm.error.InternalError:
                continue
        for g_var, func in updates.items():
            mod[g_var] = func
        return mod


def model_pipeline(
    target: tvm.target.Target,
    *,
    metadata: dict[str, Any],
    variable_bounds: dict[str, int],
    hidden_size: int,
    dtype: str,
    quantization: Quantization,
    inline_rope: bool,
) -> tvm.transform.Pass:
    """The ``relax_pipeline`` to hand to ``relax.build`` for a model library.

    ``variable_bounds`` caps the symbolic sizes for memory planning (``seq_len``, ``total_seq_len``,
    ``batch_size``); the sampler's ``num_samples``/``num_positions`` are derived from ``batch_size``
    as MLC does.  ``hidden_size``/``dtype`` size the engine's embedding buffer; ``quantization`` says
    which CPU kernels fit (:mod:`.int8_dot_matmul`), ``inline_rope`` how the KV cache's CPU attention
    kernels are called (:mod:`.cpu_attention`).
    """
    batch = variable_bounds.get("batch_size", 1)
    bounds = {"num_samples": batch, "num_positions": 6 * batch, **variable_bounds}

    @tvm.transform.module_pass(opt_level=0, name="hf2mlc_model_pipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        gpu = is_gpu(target)
        passes = [
            AttachEngineFunctions(
                target, prefill_chunk_size=metadata["prefill_chunk_size"], hidden_size=hidden_size, dtype=dtype
            ),
            AttachVariableBounds(bounds),
            tvm.transform.Sequential([]) if gpu else ReplaceDequantizeMatmul(target, quantization),
            tvm.transform.Sequential([]) if gpu else ParallelCPUAttention(inline_rope=inline_rope),
            tvm.tirx.transform.BindTarget(target),
            FuseTransposeMatmul(),
            relax.backend.DispatchSampling(),
            relax.backend.DispatchSortScan(),
            relax.transform.LegalizeOps() if gpu else relax.transform.LegalizeOps(customize_legalize_map=CPU_LEGALIZE),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination(),
            _schedule(target),
            NarrowIndices() if gpu else tvm.transform.Sequential([]),
            relax.transform.RewriteDataflowReshape(),
            relax.transform.ToNonDataflow(),
            relax.transform.RemovePurityChecking(),
            relax.transform.CallTIRRewrite(),
            relax.transform.StaticPlanBlockMemory(),
            AttachMetadata(metadata),
            relax.transform.LowerAllocTensor(),
            relax.transform.KillAfterLastUse(),
            relax.transform.LowerRuntimeBuiltin(),
            relax.transform.ComputePrimValue(),
            relax.transform.VMShapeLower(),
            OrderShapeHeapStores(),  # VMShapeLower's store order varies from process to process
            relax.transform.AttachGlobalSymbol(),
        ]
        with target, metal_matmul_disabled():
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline
