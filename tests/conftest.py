"""Session fixtures shared by the test modules: the demo model, trained once, and one full run of the
demo workflow. Both are expensive (the demo trains a model; the workflow runs every stage), so every
module that needs one asks for these instead of making its own."""

from __future__ import annotations

import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_model_build(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The embedded demo checkpoint, built once per session, with the build's stats and torch's global
    settings before and after it (test_demo checks that the build leaves them as it found them).
    Read-only for its users: write derived files elsewhere."""
    import torch

    from hf2mlc import demo

    out = tmp_path_factory.mktemp("demo") / "model"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # differs from the build's own setting, so that restoring it is visible
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.random.get_rng_state())
    try:
        stats = demo.make_demo_model(out, seed=0)
        after = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.random.get_rng_state())
    finally:
        torch.set_num_threads(threads)
    return {"dir": out, "stats": stats, "before": before, "after": after}


@pytest.fixture(scope="session")
def demo_model(demo_model_build: dict) -> Path:
    """The demo checkpoint's directory (see :func:`demo_model_build`)."""
    return demo_model_build["dir"]


@pytest.fixture(scope="session")
def demo_workflow(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One full run of every stage of the workflow on the demo, in a scratch copy: both bundles and the
    evaluations (not the upload). Tests that edit the copy must restore what they change."""
    from workflow_helpers import copy_workflow, snakemake

    work = copy_workflow(tmp_path_factory.mktemp("workflow") / "wf")
    start = time.perf_counter()
    snakemake(work, "--cores", "2", "all")
    return {"work": work, "first_seconds": time.perf_counter() - start}
