"""What every scripts/<stage>.py shares: run this checkout's hf2mlc (in any environment, conda's
included) and hand the job to hf2mlc.snakemake_script, which maps it onto the stage's arguments.

Snakemake puts this directory on ``sys.path`` for the scripts it runs, and the job's ``snakemake``
object in the script's (``__main__``'s) globals.
"""

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def run(stage: str) -> None:
    """Run ``hf2mlc.stages.<stage>`` for the Snakemake job that is running this script."""
    import __main__

    sys.path.insert(0, str(SRC))
    from hf2mlc.snakemake_script import run_rule

    run_rule(stage, __main__.snakemake)
