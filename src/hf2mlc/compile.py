"""Compile the GPT-NeoX model library for a target: the host CPU, a Mac (Metal) or an iPhone (Metal).

No weights are involved: the library takes them as a packed parameter tuple at run time, by the
names in its ``_metadata()``.  Per target:

* ``host``   LLVM for this machine's CPU, ``{lib_name}.so``, loadable here (checks, evaluation, chat);
  its matmuls get hf2mlc's CPU schedule (:mod:`hf2mlc.compiler_pass.cpu_schedule`).
* ``mac``    Metal kernels with an arm64 macOS host: ``{lib_name}.tar`` (objects), plus
  ``{lib_name}.dylib`` when Debian's ``ld64.lld`` (package ``lld``) is installed to link it.
* ``iphone`` Metal kernels with an arm64 iOS host, built as a *system library* whose symbols carry
  ``system_lib_prefix`` (``{lib_name}`` with ``-`` -> ``_``, plus ``_``: what MLC's engine looks up
  for ``model_lib`` ``system://{lib_name}``): ``{lib_name}.tar``, plus ``{lib_name}.a`` when
  ``llvm-ar`` (package ``llvm``) is installed.

Without Xcode the Metal shaders are embedded as source and compiled by the device at load time.
A GPU build fails loudly when any kernel was left without GPU threads (it would silently run on the
CPU), checked both on the scheduled IR and on the Metal source in the exported library.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import gzip
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import tvm
from tvm import relax
from tvm.relax.frontend.nn.llm.kv_cache import RopeMode
from tvm.target import Target
from tqdm import tqdm

from .compiler_pass import (
    ENGINE_FUNCTIONS,
    device_sources,
    gpu_kernel_functions,
    is_gpu,
    metal_kernel_names,
    model_pipeline,
    unbound_kernels,
)
from .errors import UserError
from .model.gpt_neox.config import GPTNeoXConfig
from .model.gpt_neox.model import EXPORTED_FUNCTIONS, ROPE_MODE, GPTNeoXForCausalLM
from .quantization import Quantization
from .spec import TARGETS, TargetSpec


#: Metal limits MLC LLM uses for iPhones ("iphone:generic"): 256 threads, 32 KiB threadgroup memory
#: and no SIMD-group reductions (thread_warp_size 1): the conservative choice for any supported iPhone.
#: The host triple carries a minimum OS (iOS 14 / macOS 11) so that the objects record their platform
#: (LC_BUILD_VERSION), which Xcode's linker checks.
_IPHONE_METAL = {"kind": "metal", "max_threads_per_block": 256, "max_shared_memory_per_block": 32768, "thread_warp_size": 1}
#: Apple-silicon Macs (apple/m1-gpu): 1024 threads, 32 KiB threadgroup memory, 32-wide SIMD groups.
_MAC_METAL = {"kind": "metal", "max_threads_per_block": 1024, "max_shared_memory_per_block": 32768, "thread_warp_size": 32}


def _plain(value: Any) -> Any:
    """TVM containers (target attributes) as plain JSON-able Python values."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or hasattr(value, "__len__"):
        return [_plain(v) for v in value]
    return str(value)


class BuildError(RuntimeError):
    """The compiler produced a library that would not do what was asked (not a user error)."""


def make_target(target: str) -> Target:
    """The TVM target for one of :data:`TARGETS`."""
    if target == "host":
        # This machine's CPU features (LLVM's host detection): without F16C every float16 value
        # goes through a conversion call, ten times slower.  A host library runs where it was built.
        # The host must be named too: a module holding host helper functions (shape functions) is
        # otherwise generated for a generic x86-64 host, kernels included (measured 15x slower).
        cpu = Target.from_device("cpu")
        return Target(cpu, host=cpu)
    if target == "mac":
        return Target(_MAC_METAL, host={"kind": "llvm", "mtriple": "arm64-apple-macos11.0", "mcpu": "apple-m1"})
    if target == "iphone":
        return Target(_IPHONE_METAL, host={"kind": "llvm", "mtriple": "arm64-apple-ios14.0", "mcpu": "apple-a14"})
    raise UserError(f"build target {target!r} is not supported; use one of: {', '.join(TARGETS)} (config/config.yaml: targets).")


#: Optional Debian tools and the output each adds: (command names tried, Debian package, output).
#: Without them a build ships the .tar of objects only; the README and the skipped tests name them.
OPTIONAL_TOOLS = {
    "ld64.lld": (("ld64.lld", "ld64.lld-14"), "lld", "Mac .dylib"),
    "llvm-ar": (("llvm-ar", "llvm-ar-14"), "llvm", "iPhone static library (.a)"),
}


def optional_tool(name: str) -> str | None:
    """The path of an optional tool of :data:`OPTIONAL_TOOLS`, or None when it is not installed."""
    commands, _package, _output = OPTIONAL_TOOLS[name]
    return next((path for path in map(shutil.which, commands) if path), None)


def _ld64_lld() -> str | None:
    return optional_tool("ld64.lld")


def _link_macos_dylib(output: str, objects: list[str], **_kwargs: Any) -> None:
    """export_library's ``fcompile`` for a Mac dylib: link with lld's Mach-O driver (no Xcode here).

    ``-undefined dynamic_lookup`` leaves the TVM runtime symbols to the process that loads the
    library (the app links the runtime), as a Mac build with Xcode does.
    """
    cmd = [
        _ld64_lld() or "ld64.lld",
        "-arch", "arm64",
        "-platform_version", "macos", "11.0", "11.0",
        "-dylib",
        # The install name is recorded in the library; the staging path would make every build differ.
        "-install_name", f"@rpath/{os.path.basename(output)}",
        # No debug map (STABS naming the temporary object files and their mtimes): reproducible bytes.
        "-S",
        "-undefined", "dynamic_lookup",
        "-o", output,
        *objects,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"ld64.lld failed linking {output}:\n{proc.stderr}")


def _deterministic_tar(output: str, files: list[str], **_kwargs: Any) -> None:
    """export_library's ``fcompile`` for the object .tar: a gzip'd tar like TVM's own, but reproducible.

    TVM's helper shells out to ``tar -czf`` (member order from the file system, mtimes, owner names and a
    gzip timestamp), so two builds of the same model differ; here members are sorted and their metadata
    fixed, so the same inputs give the same bytes and the same bundle version id.
    """
    names = [os.path.basename(f) for f in files]
    if len(set(names)) != len(names):
        raise BuildError(f"duplicate object names in {output}: {sorted(names)}")
    with open(output, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for path in sorted(files, key=os.path.basename):
                info = tar.gettarinfo(path, arcname=os.path.basename(path))
                info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)


def _archive_from_tar(tar_path: Path, archive: Path) -> None:
    """A static library (.a) from the objects in an exported .tar, for Xcode to link."""
    llvm_ar = optional_tool("llvm-ar")
    assert llvm_ar is not None
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(tar_path) as tar:
            names = [m.name for m in tar.getmembers() if m.isfile() and m.name.endswith(".o")]
            tar.extractall(tmp, filter="data")
        proc = subprocess.run(
            [llvm_ar, "rcs", str(archive.resolve()), *sorted(names)], cwd=tmp, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise BuildError(f"llvm-ar failed creating {archive}:\n{proc.stderr}")


def export_model(
    config: GPTNeoXConfig,
    quantization: Quantization,
    *,
    ffn_out_dtype: str = "float32",
    context_window_size: int,
    prefill_chunk_size: int,
    max_batch_size: int = 1,
    target: Target,
) -> tuple[tvm.IRModule, dict[str, Any]]:
    """The model as a Relax IRModule (before the pipeline) and the metadata the library will carry."""
    model = GPTNeoXForCausalLM(config, quantization, ffn_out_dtype=ffn_out_dtype)
    with target:
        mod, named_params, _ext = model.export_tvm(spec=model.get_default_spec(), allow_extern=True)
    metadata = model.metadata(
        named_params,
        context_window_size=context_window_size,
        prefill_chunk_size=prefill_chunk_size,
        max_batch_size=max_batch_size,
    )
    return mod, metadata


def _lower(
    mod: tvm.IRModule, target: Target, metadata: dict[str, Any], bounds: dict[str, int], config: GPTNeoXConfig,
    quantization: Quantization,
) -> tuple[tvm.IRModule, dict[str, int]]:
    """Run the model pipeline; on a GPU target, refuse kernels that got no GPU threads."""
    pipeline = model_pipeline(
        target,
        metadata=metadata,
        variable_bounds=bounds,
        hidden_size=config.hidden_size,
        dtype=quantization.model_dtype,
        quantization=quantization,
        inline_rope=ROPE_MODE == RopeMode.INLINE,
    )
    with tvm.transform.PassContext(opt_level=3):
        lowered = pipeline(mod)
    kernels = {"gpu_kernel_functions": 0, "metal_kernels": 0}
    if is_gpu(target):
        unbound = unbound_kernels(lowered)
        if unbound:
            raise BuildError(
                f"{len(unbound)} kernel(s) got no GPU schedule and would run on the CPU: {', '.join(unbound[:10])}"
            )
        kernels["gpu_kernel_functions"] = len(gpu_kernel_functions(lowered))
    return lowered, kernels


def _count_device_kernels(executable: relax.VMExecutable, expected: int, target: str) -> int:
    """Metal kernels in the built library; fewer than the GPU functions means some fell back to the host."""
    names = [name for source in device_sources(executable.mod, "metal") for name in metal_kernel_names(source)]
    if len(names) < expected:
        raise BuildError(
            f"the {target} library holds {len(names)} Metal kernel(s) for {expected} GPU kernel function(s): "
            "some kernels did not reach the device module"
        )
    return len(names)


def _write_outputs(executable: relax.VMExecutable, out_dir: Path, lib_name: str, target: str) -> list[str]:
    """Export the library files into ``out_dir``, each renamed into place only once complete."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{lib_name}.build-", dir=out_dir))
    try:
        written: list[str] = []
        if target == "host":
            executable.export_library(str(staging / f"{lib_name}.so"))
            written.append(f"{lib_name}.so")
        else:
            executable.export_library(str(staging / f"{lib_name}.tar"), fcompile=_deterministic_tar)
            written.append(f"{lib_name}.tar")
            if target == "mac" and _ld64_lld():
                executable.export_library(str(staging / f"{lib_name}.dylib"), fcompile=_link_macos_dylib)
                written.append(f"{lib_name}.dylib")
            if target == "iphone" and optional_tool("llvm-ar"):
                _archive_from_tar(staging / f"{lib_name}.tar", staging / f"{lib_name}.a")
                written.append(f"{lib_name}.a")
        for name in written:
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def compile_model(config: GPTNeoXConfig, spec: TargetSpec, out_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Build the model library ``spec`` describes into ``out_dir`` and return what was built.

    Each output file appears in ``out_dir`` complete or not at all (built in a temporary directory
    beside it, then renamed).  The returned info has: ``files`` (names written), ``lib_name`` and
    ``model_lib`` (what an app config names it by), ``spec`` (what it was built for), ``target`` (the TVM target as a dict),
    ``system_lib_prefix`` (iphone only, else None), ``kernels`` (GPU kernel functions and Metal kernels
    counted in the library; zero for host), ``functions`` (exported), ``metadata`` (the ``_metadata()``
    JSON as a dict: context window, prefill chunk, parameters …), ``tvm_version`` and ``seconds``.
    """
    start = time.perf_counter()
    target, lib_name, quantization = spec.target, spec.lib_name, spec.quantization
    tvm_target = make_target(target)
    prefix = spec.system_lib_prefix
    with tqdm(total=4, desc=f"compile {lib_name} ({target})", unit="step", file=sys.stderr, disable=not progress) as steps:
        mod, metadata = export_model(
            config,
            quantization,
            ffn_out_dtype=spec.ffn_out_dtype,
            context_window_size=spec.context_window_size,
            prefill_chunk_size=spec.prefill_chunk_size,
            max_batch_size=spec.max_batch_size,
            target=tvm_target,
        )
        steps.update()
        bounds = {
            "seq_len": spec.prefill_chunk_size,
            "total_seq_len": spec.context_window_size,
            "batch_size": spec.max_batch_size,
        }
        lowered, kernels = _lower(mod, tvm_target, metadata, bounds, config, quantization)
        steps.update()
        if prefix is not None:
            lowered = lowered.with_attr("system_lib_prefix", prefix)
        executable = relax.build(lowered, target=tvm_target, relax_pipeline=None, system_lib=prefix is not None)
        if kernels["gpu_kernel_functions"]:
            kernels["metal_kernels"] = _count_device_kernels(executable, kernels["gpu_kernel_functions"], target)
        steps.update()
        written = _write_outputs(executable, Path(out_dir), lib_name, target)
        steps.update()
    return {
        "files": written,
        "lib_name": lib_name,
        "model_lib": spec.model_lib,
        "spec": spec.as_params(),
        "target": _plain(tvm_target.export()),
        "target_name": target,
        "system_lib_prefix": prefix,
        "kernels": kernels,
        "functions": [*EXPORTED_FUNCTIONS, *ENGINE_FUNCTIONS, "_metadata"],
        "metadata": metadata,
        "tvm_version": tvm.__version__,
        "seconds": round(time.perf_counter() - start, 3),
    }
