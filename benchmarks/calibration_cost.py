"""What calibrated quantization costs at LINE's 3.6B shape, estimated from one full-size layer.

Building and calibrating the whole 7.2 GB stand-in takes longer than the estimate needs: the cost is
a sum over 30 identical layers plus the embedding and the head.  So this writes the stand-in
(``benchmarks/synthetic.py``) with one layer, runs the calibration forward pass over
``--tokens`` random tokens (timestamps of the observe() calls split it into the layer and the head),
then times, per method, folding and quantizing that layer, the head and the embedding, and
extrapolates: ``forward_layer * 30 + forward_head + Σ_methods (layer * 30 + head + embedding)``.
The RTN conversion's own I/O is not included (benchmarks/RESULTS.md has it).

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
from hf2mlc.loader.huggingface import HuggingFaceWeights, SourceReader  # noqa: E402
from hf2mlc.model.config import GPTNeoXConfig  # noqa: E402
from hf2mlc.quantization import METHODS, get_quantization  # noqa: E402
from hf2mlc.quantization.calibration import (  # noqa: E402
    LAYER_LINEARS,
    CalibrationStats,
    CalibrationText,
    plan_layer,
    quantize_planned,
)
from hf2mlc.reference import stream_logit_blocks  # noqa: E402

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
        stats.observe(layer, name, x)

    start = time.perf_counter()
    for _ in stream_logit_blocks(model_dir, text.segments, observe=observe):
        pass
    end = time.perf_counter()
    forward_layer = stamps["-1:embed_out"] - stamps["0:attention.query_key_value"]
    forward_head = end - stamps["-1:embed_out"]
    result: dict[str, object] = {
        "tokens": args.tokens, "quantization": q.name,
        "forward_first_layer_s": round(stamps["0:attention.query_key_value"] - start, 2),
        "forward_layer_s": round(forward_layer, 2), "forward_head_s": round(forward_head, 2), "methods": {},
    }
    print(json.dumps(result), flush=True)
    with HuggingFaceWeights(model_dir) as weights:
        reader = SourceReader(weights, config)
        embed = reader.read("gpt_neox.embed_in.weight").astype(np.float32)
        for method in methods:
            timing: dict[str, float] = {}
            for layer in (0, -1):
                tensors = {n: reader.read(n).astype(np.float32) for n in _layer_names(layer)}
                t0 = time.perf_counter()
                folded, plans = plan_layer(tensors, layer, stats, config, method, q)
                t1 = time.perf_counter()
                for linear, plan in plans.items():
                    quantize_planned(folded[f"{linear}.weight"], plan, method, q)
                timing["layer" if layer == 0 else "head"] = round(time.perf_counter() - t0, 2)
                timing["plan_layer" if layer == 0 else "plan_head"] = round(t1 - t0, 2)
            t0 = time.perf_counter()
            quantize_planned(embed, None, method, q, embedding=True)
            timing["embedding"] = round(time.perf_counter() - t0, 2)
            timing["estimate_3_6b_min"] = round(
                (forward_layer * LAYERS_AT_FULL_SIZE + forward_head
                 + timing["layer"] * LAYERS_AT_FULL_SIZE + timing["head"] + timing["embedding"]) / 60, 1
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
