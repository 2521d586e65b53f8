"""Proof that a GPU build put its kernels on the GPU.

A TensorIR function without thread bindings compiles for a GPU target without any error: it simply
becomes a loop on the host CPU, and a GPU library then "works" at CPU speed or not at all on iOS.
Two independent checks catch that: before code generation every kernel must bind GPU threads, and
after it the device module of the library must hold at least that many kernels.
"""

from __future__ import annotations

import re

import tvm
from tvm import tirx

_KERNEL_RE = re.compile(r"^\s*kernel\s+void\s+(\w+)\s*\(", re.MULTILINE)


#: How TVMScript prints a GPU thread binding (apache-tvm 0.27 has no Python TIR visitor to walk
#: the statements, so the printed function is searched).
_THREAD_BINDING_RE = re.compile(r"T\.thread_binding\(|T\.launch_thread\(|\"thread_extent\"")


def _binds_threads(func: tirx.PrimFunc) -> bool:
    return _THREAD_BINDING_RE.search(func.script()) is not None


def _kernels(mod: tvm.IRModule) -> list[tuple[str, tirx.PrimFunc]]:
    """The TensorIR functions meant for the device: all but the VM's host helpers (shape functions,
    symbolic-expression evaluators), which the compiler marks ``tirx.is_host_func``."""
    return [
        (g_var.name_hint, func)
        for g_var, func in mod.functions_items()
        if isinstance(func, tirx.PrimFunc) and not (func.attrs is not None and func.attrs.get("tirx.is_host_func", False))
    ]


def unbound_kernels(mod: tvm.IRModule) -> list[str]:
    """Kernels in ``mod`` that bind no GPU thread (they would silently run on the host CPU)."""
    return sorted(name for name, func in _kernels(mod) if not _binds_threads(func))


def gpu_kernel_functions(mod: tvm.IRModule) -> list[str]:
    """Kernels in ``mod`` that do bind GPU threads."""
    return sorted(name for name, func in _kernels(mod) if _binds_threads(func))


def metal_kernel_names(source: str) -> list[str]:
    """Kernel entry points declared in Metal shading-language source."""
    return _KERNEL_RE.findall(source)


def device_sources(module: tvm.runtime.Module, kind: str = "metal") -> list[str]:
    """Source text of every imported module of ``kind`` below ``module`` (the built library)."""
    found: list[str] = []
    stack = [module]
    seen: set[int] = set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if current.kind == kind:
            found.append(current.inspect_source())
        stack.extend(current.imports)
    return found
