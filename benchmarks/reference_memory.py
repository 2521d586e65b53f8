"""Peak memory and wall time of the streaming float32 reference on the 3.6B stand-in.

    python -m benchmarks.reference_memory --scale full --tokens 1000
    python -m benchmarks.reference_memory --scale quick --tokens 10000   # full-size tensors, 2 layers

One fresh process per measurement (peak RSS is the process's ``VmHWM``).  The tokens go through the
reference as the evaluation sends them (rows of at most ``--row`` tokens, the host context window), and
each block of logits is reduced as the reference artefact reduces it (top-k, log-sum-exp), so the
numbers are those of rule ``reference``.  Memory does not grow with the layer count (one layer's weights
at a time), so the ``quick`` scale (every tensor at full size, 2 of the 30 layers) measures the peak of
10,000 tokens in minutes; time per layer × 30 extrapolates its wall time.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from benchmarks import synthetic  # noqa: E402
from hf2mlc.convert import peak_rss_mb  # noqa: E402
from hf2mlc.reference import stream_logit_blocks  # noqa: E402
from hf2mlc.reference_cache import TOP_K, log_sum_exp, top_k  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(synthetic.SCALES), default="quick")
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--row", type=int, default=2048, help="longest row (the host context window)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    args = parser.parse_args()
    shape = synthetic.SCALES[args.scale]
    checkpoint = args.work / f"line-3.6b-synthetic-{args.scale}"
    began = time.perf_counter()
    synthetic.ensure_checkpoint(checkpoint, shape)
    checkpoint_seconds = time.perf_counter() - began
    idle_mb = peak_rss_mb()
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, shape["vocab_size"], size=min(args.row, args.tokens - start)) for start in range(0, args.tokens, args.row)]
    began, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    for _, block in stream_logit_blocks(checkpoint, rows):
        top_k(block, TOP_K)
        log_sum_exp(block)
    seconds = time.perf_counter() - began
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = used.ru_utime - cpu.ru_utime + used.ru_stime - cpu.ru_stime
    layers = shape["num_hidden_layers"]
    print(json.dumps({
        "scale": args.scale, "layers": layers, "tokens": args.tokens, "row": args.row,
        "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
        "seconds_per_layer": round(seconds / layers, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1), "rss_before_mb": round(idle_mb, 1),
        "checkpoint_seconds": round(checkpoint_seconds, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
