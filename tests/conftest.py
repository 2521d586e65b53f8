"""Session fixtures shared by the test modules: the demo model, trained once, and one full run of the
demo workflow. Both are expensive (the demo trains a model; the workflow runs every stage), so every
module that needs one asks for these instead of making its own.

The suite runs on pytest-xdist workers (pyproject's addopts), so "once per session" means once for all
workers: each build lives in the controller's temporary root, which holds every worker's own root, and a
file lock makes the first worker that needs it the one that builds it (pytest-xdist's documented pattern
for session fixtures). The workflow run, the longest, starts in the background as soon as a worker
begins, so that the other tests run while it builds."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

#: The session workflow's Snakemake arguments, and how long its tests wait for it (as workflow_helpers does).
WORKFLOW_ARGS = ("--cores", "2", "all")
WORKFLOW_TIMEOUT_S = 1200


def _shared_root(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary root every process of this session sees: the controller's (a worker's own root is in it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if hasattr(config, "workerinput") else base


def _built_once(root: Path, name: str, build: Callable[[Path], object]) -> tuple[Path, object]:
    """``build(root / name)`` run once for the whole session, and what it returned (pickled beside it).

    A build that failed left no ``<name>.done`` and is redone, so it fails again, with its own error, in
    whichever worker asks next."""
    directory, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.is_file():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            done.write_bytes(pickle.dumps(build(directory)))  # written last: its presence says the build is whole
    return directory, pickle.loads(done.read_bytes())


@pytest.fixture(scope="session")
def demo_model_build(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The embedded demo checkpoint, built once per session, with the build's stats and torch's global
    settings before and after it (test_demo checks that the build leaves them as it found them; they are
    the building process's, whichever worker that was). Read-only for its users: write derived files
    elsewhere."""

    def build(directory: Path) -> dict:
        import torch

        from hf2mlc import demo

        threads = torch.get_num_threads()
        torch.set_num_threads(2)  # differs from the build's own setting, so that restoring it is visible
        before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.random.get_rng_state())
        try:
            stats = demo.make_demo_model(directory / "model", seed=0)
            after = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.random.get_rng_state())
        finally:
            torch.set_num_threads(threads)
        return {"stats": stats, "before": before, "after": after}

    directory, built = _built_once(_shared_root(request.config, tmp_path_factory), "demo", build)
    return {"dir": directory / "model", **built}


@pytest.fixture(scope="session")
def demo_model(demo_model_build: dict) -> Path:
    """The demo checkpoint's directory (see :func:`demo_model_build`)."""
    return demo_model_build["dir"]


def _start_demo_workflow(root: Path) -> Path:
    """Start the session's workflow run in the background (once: the first caller starts it); its directory.

    ``wf/`` is the workflow copy; ``rc`` appears when Snakemake has exited, with its exit status, beside
    its output (``snakemake.out``, ``snakemake.err``) and ``pid`` (of its process group, which the
    controller ends if the session ends first)."""
    from workflow_helpers import SNAKEMAKE, copy_workflow

    build = root / "workflow"
    with FileLock(str(root / "workflow.lock")):
        if not build.exists():
            work = copy_workflow(build / "wf")
            with open(build / "snakemake.out", "w") as out, open(build / "snakemake.err", "w") as err:
                proc = subprocess.Popen(
                    ["sh", "-c", '"$@"; echo $? > ../rc.tmp && mv ../rc.tmp ../rc', "sh", SNAKEMAKE, *WORKFLOW_ARGS],
                    cwd=work, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True,
                )
            (build / "pid").write_text(str(proc.pid), encoding="utf-8")
    return build


@pytest.fixture(scope="session", autouse=True)
def _demo_workflow_started(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Starts the session workflow before this process's first test, if any collected test needs it."""
    if any("demo_workflow" in item.fixturenames for item in request.session.items):
        _start_demo_workflow(_shared_root(request.config, tmp_path_factory))


@pytest.fixture(scope="session")
def demo_workflow(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One full run of every stage of the workflow on the demo, in a scratch copy: both bundles and the
    evaluations (not the upload). Tests that edit the copy must restore what they change.

    Under xdist each worker gets its own copy of the one run (Snakemake's metadata and mtimes kept, so it
    is as up to date as the original): the tests edit it in place, which must not race another worker's
    dry run."""
    from workflow_helpers import snakemake_failed

    build = _start_demo_workflow(_shared_root(request.config, tmp_path_factory))
    work = build / "wf"
    deadline = time.monotonic() + WORKFLOW_TIMEOUT_S
    while not (build / "rc").is_file():
        if time.monotonic() > deadline:
            raise AssertionError(f"the session's demo workflow ({work}) did not finish in {WORKFLOW_TIMEOUT_S} s")
        time.sleep(1)
    returncode = int((build / "rc").read_text(encoding="utf-8"))
    if returncode != 0:
        output = [(build / name).read_text(encoding="utf-8", errors="replace") for name in ("snakemake.out", "snakemake.err")]
        raise snakemake_failed(work, WORKFLOW_ARGS, returncode, *output)
    if hasattr(request.config, "workerinput"):
        own = tmp_path_factory.mktemp("workflow") / "wf"
        shutil.copytree(work, own, symlinks=True)
        work = own
    return {"work": work}


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The controller (the only process that outlives every worker) ends a session workflow still running."""
    if hasattr(session.config, "workerinput"):
        return
    factory: pytest.TempPathFactory | None = getattr(session.config, "_tmp_path_factory", None)
    build = factory.getbasetemp() / "workflow" if factory is not None else None
    if build is not None and (build / "pid").is_file() and not (build / "rc").is_file():
        try:
            os.killpg(int((build / "pid").read_text(encoding="utf-8")), signal.SIGTERM)
        except ProcessLookupError:
            pass


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with a test that uses the session workflow run last: the workflow, started in the background
    when the first worker begins, is ready by then, and the other tests fill the wait. Modules stay whole
    and in their order otherwise (so their module fixtures are made once), the same order in every worker
    (as xdist requires)."""
    late = {item.path for item in items if "demo_workflow" in item.fixturenames}
    items.sort(key=lambda item: item.path in late)
