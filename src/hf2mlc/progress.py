"""Progress with an estimate for the steps that take minutes on a 3.6B model, in the job's log and on
the terminal.

Every bar is tqdm's (elapsed, rate and the estimate of the time left) written to ``sys.stderr``. Inside a
Snakemake job, :func:`hf2mlc.snakemake_script.run_stage` points ``sys.stderr`` at a :class:`LogAndTerminal`,
so each bar lands in the rule's ``log:`` as plain lines and on the terminal as one line updated in place.
Outside Snakemake (``hf2mlc`` commands, tests) it is the ordinary stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import IO, TypeVar

from tqdm import tqdm

T = TypeVar("T")

#: Seconds between two updates of a bar: a log gets a line per update.
UPDATE_SECONDS = 2.0


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """``iterable``, reporting how far it got and how long the rest will take."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with bar(desc=desc, total=total, unit=unit) as progress_bar:  # type: ignore[arg-type]
        for item in iterable:
            yield item
            progress_bar.update()


def bar(*, desc: str, total: int, unit: str = "step") -> tqdm:
    """A bar to advance by hand (``.update()``) through steps that are not one loop; close it (``with``)."""
    return tqdm(
        total=total,
        desc=f"[hf2mlc] {desc}",
        unit=unit,
        file=sys.stderr,
        mininterval=UPDATE_SECONDS,
        smoothing=0.1,
        dynamic_ncols=False,
        ncols=100,
    )


class LogAndTerminal:
    """A text stream that writes to a log file and to the terminal: in the log, tqdm's carriage returns
    become line ends (a log is read with ``less`` or ``tail``, which do not redraw a line)."""

    def __init__(self, log: IO[str], terminal: IO[str]) -> None:
        self.log = log
        self.terminal = terminal

    def write(self, text: str) -> int:
        self.log.write(text.replace("\r", "\n"))
        self.terminal.write(text)
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.terminal.flush()

    def isatty(self) -> bool:
        return False
