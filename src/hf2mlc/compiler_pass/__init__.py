"""Compiler passes and build checks for hf2mlc's model libraries.

* :func:`model_pipeline`: the Relax pipeline (legalize, fuse, dlight, memory planning, metadata).
* :class:`AttachEngineFunctions`: the sampling and logit-processing functions MLC's engine requires.
* :func:`metal_matmul_disabled`: the single workaround for apache-tvm 0.27's crashing Metal matmul rule.
* :func:`unbound_kernels` / :func:`metal_kernel_names` / :func:`device_sources`: the checks that a
  GPU build really put its kernels on the GPU.
"""

from __future__ import annotations

from .engine_functions import ENGINE_FUNCTIONS, AttachEngineFunctions
from .kernel_check import device_sources, gpu_kernel_functions, metal_kernel_names, unbound_kernels
from .metadata import METADATA_FUNCTION, AttachMetadata, AttachVariableBounds, planned_memory
from .metal_matmul import metal_matmul_disabled
from .pipeline import is_gpu, model_pipeline
from .transpose_matmul import FuseTransposeMatmul

__all__ = [
    "ENGINE_FUNCTIONS",
    "METADATA_FUNCTION",
    "AttachEngineFunctions",
    "AttachMetadata",
    "AttachVariableBounds",
    "FuseTransposeMatmul",
    "device_sources",
    "gpu_kernel_functions",
    "is_gpu",
    "metal_kernel_names",
    "metal_matmul_disabled",
    "model_pipeline",
    "planned_memory",
    "unbound_kernels",
]
