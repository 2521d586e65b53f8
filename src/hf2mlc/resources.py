"""Memory a job needs, as a function of the model's parameter count: the one estimate of it.

Snakemake hands ``resources: mem_mb`` to SLURM or Kubernetes, which place (and kill) jobs by it, and the
DAG-time check (:func:`hf2mlc.preflight.check_memory`) refuses a model whose jobs would ask for more than the
machine has: the same number, so a job the check lets through is one a scheduler can place. The
numbers come from measured peaks at two sizes: the demo model (the benchmark files of a demo run,
``results/benchmarks/**``: the interpreter, torch and TVM dominate) and LINE's 3.6B shape
(``benchmarks/RESULTS.md``). In between and beyond, a job's peak is taken as linear in the parameter
count through those two points, plus headroom.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .model.gpt_neox.config import GPTNeoXConfig
from .model.gpt_neox.params import parameter_count

#: Parameters of the two measured models (tests/test_resources.py counts them from their configs): the
#: embedded demo (hidden 128, 2 layers, vocab 1024, tied)
#: and LINE's japanese-large-lm-3.6b (hidden 3072, 30 layers, intermediate 12288, vocab 51200, tied; the library's parameter set holds the head as its own tensor).
DEMO_PARAMETERS = 658_944
LINE_3_6B_PARAMETERS = 3_713_163_264

#: Peak RSS in MiB per rule: (demo run, 3.6B). Demo: max_rss of a `snakemake all` run on the demo.
#: 3.6B (benchmarks/RESULTS.md): conversion 447 MiB (streams one tensor at a time); compile 559 MiB (no
#: weights). The check and the evaluation hold the host library's weights (q0f16: 7,774 MiB measured) and,
#: one after the other, the streaming float32 reference (hf2mlc.reference: 1,766 MiB measured for 1,000
#: tokens of the 30-layer stand-in, 1,685 MiB for 10,000 tokens at full width): the larger of the two, plus
#: the evaluation's top-k reference arrays.
#: Download, patch, tokenizer, package and upload stream or link files: their peak does not grow.
MEASURED_PEAK_MIB: dict[str, tuple[float, float]] = {
    "download": (982, 982),
    "patch": (38, 38),
    "tokenizer": (314, 314),
    "convert": (42, 447),
    # Calibrated: the float32 forward over the calibration text plus one layer's statistics (GPTQ's
    # Hessians); 5.7-6.6 GB measured at the 3.6B layer shape holding every method's statistics at once.
    "convert_calibrated": (450, 6_600),
    "compile": (504, 559),
    "check": (574, 7_900),
    "evaluate": (450, 8_900),
    "reference": (450, 1_800),
    "reference_answers": (450, 1_800),
    "package": (45, 45),
    "upload": (300, 300),
    "tables": (200, 200),
    "plot": (200, 200),
}
#: Headroom over the measured peak: allocator noise, a longer evaluation text, a second thread pool.
HEADROOM = 1.25
MIB_PER_MB = 2**20 / 1e6
#: The rules whose peak grows with the model: those the DAG-time memory check weighs.
MODEL_SIZED_RULES = tuple(rule for rule, (small, large) in MEASURED_PEAK_MIB.items() if small != large)


def mem_mb(rule: str, parameters: int) -> int:
    """``resources: mem_mb`` for a job of ``rule`` on a model of ``parameters`` parameters (MB, 10**6)."""
    small, large = MEASURED_PEAK_MIB[rule]
    slope = (large - small) / (LINE_3_6B_PARAMETERS - DEMO_PARAMETERS)
    peak_mib = max(small, small + slope * (parameters - DEMO_PARAMETERS))
    return int(math.ceil(peak_mib * HEADROOM * MIB_PER_MB / 100) * 100)


def mem_mb_for_model(rule: str, model_dir: str | os.PathLike[str] | None) -> int:
    """:func:`mem_mb` for the checkpoint in ``model_dir`` (its config.json: Snakemake asks for a job's
    resources once its inputs exist). ``None`` for a rule with no checkpoint input, whose peak does not
    grow with the model."""
    if model_dir is None:
        small, large = MEASURED_PEAK_MIB[rule]
        if small != large:
            raise ValueError(f"rule {rule}: its memory grows with the model; give it the model's directory")
        return mem_mb(rule, DEMO_PARAMETERS)
    config = Path(model_dir) / "config.json"
    if not config.is_file():  # not downloaded yet: Snakemake asks again when the job is ready
        raise FileNotFoundError(config)
    return mem_mb(rule, parameter_count(GPTNeoXConfig.from_file(config)))
