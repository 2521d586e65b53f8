"""Progress reaches both the job's log (as lines) and the terminal (a line updated in place)."""

from __future__ import annotations

import io
import re
import time
from contextlib import redirect_stderr

from hf2mlc import progress as progress_mod
from hf2mlc.progress import LogAndTerminal, progress


def test_bar_shows_an_estimate_in_the_log_and_on_the_terminal(monkeypatch) -> None:
    monkeypatch.setattr(progress_mod, "UPDATE_SECONDS", 0.0)
    log, terminal = io.StringIO(), io.StringIO()
    with redirect_stderr(LogAndTerminal(log, terminal)):
        items = []
        for i in progress(range(5), desc="evaluate demo", total=5, unit="doc"):
            time.sleep(0.01)
            items.append(i)
    assert items == [0, 1, 2, 3, 4]
    lines = [line for line in log.getvalue().splitlines() if line.strip()]
    assert "\r" not in log.getvalue() and len(lines) >= 2
    # tqdm's "elapsed<remaining" estimate, with the count and the unit
    assert re.search(r"\[hf2mlc\] evaluate demo: .*\b3/5 \[\d\d:\d\d<\d\d:\d\d", log.getvalue()), log.getvalue()
    assert lines[-1].rstrip().endswith("doc/s]") and "5/5" in lines[-1]
    assert "\r" in terminal.getvalue() and "5/5" in terminal.getvalue()
