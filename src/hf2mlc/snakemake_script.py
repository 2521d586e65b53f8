"""The adapter between Snakemake's ``script:`` directive and the stage functions in :mod:`hf2mlc.stages`.

A rule names its inputs, outputs and params as the stage's keyword arguments (an unnamed single output is
``out_dir``; the ``code`` param is the rule's code digest, for Snakemake only), and a param whose argument
is typed with a spec (:mod:`hf2mlc.spec`) arrives as that spec: :func:`run_rule` does the mapping for every
stage, so a ``scripts/<stage>.py`` is one call. It sends everything the stage prints (progress bars included) to the rule's ``log:`` file, and turns a
:class:`~hf2mlc.errors.UserError` into one clear line on the terminal and in the log, with a non-zero
exit, instead of a traceback that buries the message.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import typing
from collections.abc import Callable
from typing import Any

from .errors import UserError
from .faults import as_user_error


def run_stage(snakemake: Any, stage: Callable[..., Any], /, **kwargs: Any) -> None:
    """Run ``stage(**kwargs)`` with stdout/stderr and logging sent to ``snakemake.log[0]``.

    The job's thread count (``threads:`` scaled by ``--cores``) caps torch's, TVM's and numpy's thread
    pools, so parallel jobs do not oversubscribe the machine; it must be set before they are imported.
    """
    for name in ("OMP_NUM_THREADS", "TVM_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(snakemake.threads)
    log_path = snakemake.log[0]
    terminal = sys.__stderr__
    output = snakemake.output[0] if len(snakemake.output) else None
    try:
        log_file = open(log_path, "w", encoding="utf-8", buffering=1)
    except OSError as err:  # a read-only or full results/ already stops the log
        user = as_user_error(err, output=output)
        if user is None:
            raise
        print(f"hf2mlc: rule {snakemake.rule}: {user}", file=terminal)
        sys.exit(1)
    with log_file as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        # Warnings (a deprecated family, a missing optional tool) also reach the terminal, not only the log.
        loud = logging.StreamHandler(terminal)
        loud.setLevel(logging.WARNING)
        loud.setFormatter(logging.Formatter(f"hf2mlc: rule {snakemake.rule}: %(levelname)s: %(message)s"))
        root = logging.getLogger()
        root.handlers[:] = [handler, loud]
        root.setLevel(logging.INFO)
        try:
            stage(**kwargs)
        except (UserError, OSError) as err:
            user = as_user_error(err, output=output)
            if user is None:
                raise
            message = f"hf2mlc: rule {snakemake.rule}: {user}"
            print(message, file=log)
            print(message, file=terminal)
            sys.exit(1)


#: The log line that lists the hf2mlc modules a job loaded.
LOADED_MODULES_LINE = "hf2mlc modules loaded: "
#: Params and inputs that are for Snakemake only (rerun decisions, job order), not stage arguments.
#: ``watched``: files a stage reads through a setting (an evaluation text named by path), inputs so that
#: editing them reruns the job.
WORKFLOW_ONLY = ("code", "gate", "watched")


def stage_arguments(stage: Callable[..., Any], snakemake: Any) -> dict[str, Any]:
    """The keyword arguments of ``stage`` for this job, from the rule's named input, output and params."""
    hints = typing.get_type_hints(stage)
    accepted = inspect.signature(stage).parameters
    kwargs: dict[str, Any] = {}
    for name, value in [*snakemake.input.items(), *snakemake.output.items(), *snakemake.params.items()]:
        if name in WORKFLOW_ONLY:
            continue
        if name not in accepted:
            raise TypeError(f"rule {snakemake.rule}: {name!r} is not an argument of hf2mlc.stages.{stage.__name__}")
        hint = hints.get(name)
        if hasattr(hint, "from_params"):
            value = hint.from_params(dict(value))
        elif isinstance(value, list):  # a named list of files (Snakemake's Namedlist)
            value = [str(v) for v in value]
        kwargs[name] = value
    if "out_dir" in accepted and "out_dir" not in kwargs:
        kwargs["out_dir"] = snakemake.output[0]
    return kwargs


def run_rule(stage_name: str, snakemake: Any) -> None:
    """Run ``hf2mlc.stages.<stage_name>`` for a Snakemake job: its arguments mapped, its output logged."""
    from . import stages

    stage = getattr(stages, stage_name)
    kwargs = stage_arguments(stage, snakemake)
    # The one place every stage's inputs pass through before it reads them: each is verified against its
    # producer's manifest, and a checkpoint against its config.json and this machine's memory, inside
    # run_stage's error handling (so a failure is one line).
    run_stage(snakemake, _with_input_checks(stage, stage_name, stages.READS_WHOLE.get(stage_name, ())), **kwargs)
    # What actually ran, for the test that holds each rule's code digest (hf2mlc.closure) to cover it.
    with open(snakemake.log[0], "a", encoding="utf-8") as log:
        print(f"{LOADED_MODULES_LINE}{' '.join(sorted(m for m in sys.modules if m.split('.')[0] == __package__))}", file=log)


def _with_input_checks(stage: Callable[..., Any], stage_name: str, reads_whole: tuple[str, ...]) -> Callable[..., Any]:
    def checked(**kwargs: Any) -> Any:
        from .preflight import check_stage_inputs

        check_stage_inputs(stage_name, kwargs, reads_whole=reads_whole)
        return stage(**kwargs)

    return checked
