"""The one workaround for apache-tvm 0.27's Metal matmul schedule, kept in one visible place.

``dlight.gpu.Matmul`` hands every Metal matmul to ``MetalMatmul`` (simdgroup tensorization) first, and
that rule crashes the whole process with a segmentation fault inside TVM's C++ (so no ``try`` can
catch it).  While :func:`metal_matmul_disabled` is active, ``MetalMatmul.apply`` raises instead; the
generic ``Matmul`` rule catches that and falls back to its portable schedule, and the build succeeds.

``tests/test_compile.py::test_metal_matmul_still_crashes`` applies the unpatched rule in a child
process and fails once it stops crashing, i.e. when this workaround can be deleted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tvm.s_tir.dlight.gpu import matmul as _dlight_matmul


def _refuse(*_args: object, **_kwargs: object) -> None:
    raise NotImplementedError("MetalMatmul is disabled by hf2mlc: it segfaults in apache-tvm 0.27")


@contextlib.contextmanager
def metal_matmul_disabled() -> Iterator[None]:
    """Within the block, dlight's Metal simdgroup matmul rule is skipped (see the module docstring)."""
    original = _dlight_matmul.MetalMatmul.apply
    _dlight_matmul.MetalMatmul.apply = _refuse
    try:
        yield
    finally:
        _dlight_matmul.MetalMatmul.apply = original
