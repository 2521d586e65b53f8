"""The adapter between Snakemake's ``script:`` directive and the stage functions in :mod:`hf2mlc.stages`.

It sends everything the stage prints (progress bars included) to the rule's ``log:`` file, and turns a
:class:`~hf2mlc.errors.UserError` into one clear line on the terminal and in the log, with a non-zero
exit, instead of a traceback that buries the message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
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
