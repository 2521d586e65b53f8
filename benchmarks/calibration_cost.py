"""What calibrated quantization costs at LINE's 3.6B shape, estimated from one full-size layer.

Building and calibrating the whole 7.2 GB stand-in takes longer than the estimate needs: the cost is
a sum over 30 identical layers plus the embedding and the head.  So this writes the stand-in
(``benchmarks/synthetic.py``) with one layer, runs the calibration forward pass over
``--tokens`` random tokens (timestamps of the observe() calls split it into the layer and the head),
then times, per method, folding and quantizing that layer, the head and the embedding, and
extrapolates: ``(forward_layer + layer) * 30 + head + embedding`` per method.
Each phase is timed in wall seconds and in CPU seconds of the process (all threads): on a shared
machine the wall time says more about the neighbours than about the work, and ``CPU / cores`` bounds
what the same work takes on that many free cores.  The RTN conversion's own I/O is not included
(benchmarks/RESULTS.md has it).

    PYTHONPATH=src python benchmarks/calibration_cost.py --tokens 2048 --quantization q4f16_0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.synthetic import SCALES, ensure_checkpoint  # noqa: E402
from hf2mlc.convert import peak_rss_mb  # noqa: E402
from hf2mlc.model.gpt_neox.loader import GPTNeoXCheckpoint, SourceReader  # noqa: E402
from hf2mlc.model.gpt_neox.config import GPTNeoXConfig  # noqa: E402
from hf2mlc.quantization import METHODS, get_quantization  # noqa: E402
from hf2mlc.quantization.calibration import (  # noqa: E402
    LAYER_LINEARS,
    CalibrationStats,
    CalibrationText,
    plan_layer,
    quantize_planned,
)
from hf2mlc.reference import CheckpointWeights, final_hidden_states  # noqa: E402

LAYERS_AT_FULL_SIZE = SCALES["full"]["num_hidden_layers"]


def _layer_names(layer: int) -> list[str]:
    if layer < 0:
        return ["gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias", "embed_out.weight"]
    p = f"gpt_neox.layers.{layer}"
    names = [f"{p}.{n}.{s}" for n in ("input_layernorm", "post_attention_layernorm") for s in ("weight", "bias")]
    return names + [f"{p}.{lin}.{s}" for lin in LAYER_LINEARS for s in ("weight", "bias")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("benchmarks/work"))
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--quantization", default="q4f16_0")
    parser.add_argument("--methods", default=",".join(m for m in METHODS if m != "rtn"))
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = parser.parse_args()

    shape = {**SCALES["full"], "num_hidden_layers": 1}
    model_dir = args.work / "synthetic-1-layer"
    ensure_checkpoint(model_dir, shape, progress=False)
    config = GPTNeoXConfig.from_file(model_dir)
    q = get_quantization(args.quantization)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, config.vocab_size, args.tokens)
    text = CalibrationText("random", "-", [ids[i:i + 512] for i in range(0, args.tokens, 512)])

    methods = [METHODS[m] for m in args.methods.split(",")]
    need_hessians = any(m.gptq for m in methods)
    stamps: dict[str, float] = {}
    stats = CalibrationStats(hessians=need_hessians)

    def observe(layer: int, name: str, x: np.ndarray) -> None:
        stamps.setdefault(f"{layer}:{name}", time.perf_counter())
        stamps.setdefault(f"cpu {layer}:{name}", time.process_time())
        stats.observe(layer, name, x)

    source = CheckpointWeights(model_dir, config)
    hidden = final_hidden_states(config, source, text.segments, observe=observe)  # as collect_statistics does
    observe(-1, "embed_out", hidden)
    source.close()
    forward_layer = stamps["-1:embed_out"] - stamps["0:attention.query_key_value"]
    forward_layer_cpu = stamps["cpu -1:embed_out"] - stamps["cpu 0:attention.query_key_value"]
    result: dict[str, object] = {
        "tokens": args.tokens, "quantization": q.name,
        "forward_layer_s": round(forward_layer, 2), "forward_layer_cpu_s": round(forward_layer_cpu, 2), "methods": {},
    }
    print(json.dumps(result), flush=True)
    with GPTNeoXCheckpoint(model_dir) as weights:
        reader = SourceReader(weights, config)
        embed = reader.read("gpt_neox.embed_in.weight").astype(np.float32)
        for method in methods:
            timing: dict[str, float] = {}
            for layer in (0, -1):
                tensors = {n: reader.read(n).astype(np.float32) for n in _layer_names(layer)}
                part = "layer" if layer == 0 else "head"
                t0, c0 = time.perf_counter(), time.process_time()
                folded, plans = plan_layer(tensors, layer, stats, config, method, q)
                for linear, plan in plans.items():
                    quantize_planned(folded[f"{linear}.weight"], plan, method, q)
                timing[part] = round(time.perf_counter() - t0, 2)
                timing[f"{part}_cpu"] = round(time.process_time() - c0, 2)
            t0, c0 = time.perf_counter(), time.process_time()
            quantize_planned(embed, None, method, q, embedding=True)
            timing["embedding"] = round(time.perf_counter() - t0, 2)
            timing["embedding_cpu"] = round(time.process_time() - c0, 2)
            for label, f, suffix in (("estimate_3_6b_wall_min", forward_layer, ""), ("estimate_3_6b_cpu_min", forward_layer_cpu, "_cpu")):
                timing[label] = round(
                    ((f + timing[f"layer{suffix}"]) * LAYERS_AT_FULL_SIZE + timing[f"head{suffix}"] + timing[f"embedding{suffix}"]) / 60, 1
                )
            result["methods"][method.name] = timing  # type: ignore[index]
            print(method.name, json.dumps(timing), flush=True)
    stats.close()
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
