"""Skip markers for the outputs that need an optional Debian tool (see hf2mlc.compile.OPTIONAL_TOOLS).

A fresh machine without them must still pass the README's test command: these tests then skip and say
which package adds the output they check.
"""

from __future__ import annotations

import pytest

from hf2mlc.compile import OPTIONAL_TOOLS, optional_tool


def needs(tool: str) -> pytest.MarkDecorator:
    """Skip unless ``tool`` is installed, naming its Debian package and the output it adds."""
    _commands, package, output = OPTIONAL_TOOLS[tool]
    return pytest.mark.skipif(
        optional_tool(tool) is None, reason=f"{tool} (Debian package {package}) not installed: no {output} to check"
    )


needs_lld = needs("ld64.lld")
needs_llvm_ar = needs("llvm-ar")
