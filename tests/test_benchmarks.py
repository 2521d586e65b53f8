"""The benchmark harness (benchmarks/), run for real at a tiny scale so that it cannot rot.

The full-scale numbers live in benchmarks/RESULTS.md; here the same code paths run on a GPT-NeoX of
hidden 128: the synthetic checkpoint generator (against safetensors' and transformers' own readers),
the plain numpy baseline (against hf2mlc's reference quantizer), the workflow-log parser and file
sync, and the whole harness command on the convert, compile and host sections.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import baseline, report, synthetic, workflow_bench  # noqa: E402
from hf2mlc.quantization import get_quantization  # noqa: E402
from hf2mlc.quantization.group import quantize_embedding, quantize_linear  # noqa: E402
from hf2mlc.tensor_cache import f32_to_bf16  # noqa: E402

TINY = synthetic.SCALES["tiny"]


# ----------------------------------------------------------------------------- synthetic checkpoint


def test_synthetic_checkpoint_reads_back_through_safetensors_and_transformers(tmp_path: Path) -> None:
    from safetensors import safe_open

    out = tmp_path / "ckpt"
    record = synthetic.ensure_checkpoint(out, TINY, max_shard_bytes=300_000, progress=False)
    assert record["action"] == "generated"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    plan = {t.name: t for t in synthetic.tensor_plan(TINY)}
    assert set(index["weight_map"]) == set(plan)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in plan.values())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files == synthetic.expected_files(TINY, max_shard_bytes=300_000)[1:-1]
    seen = 0
    for name in files:
        with safe_open(out / name, framework="np") as handle:
            for key in handle.keys():
                assert index["weight_map"][key] == name
                got, want = handle.get_tensor(key), synthetic.tensor_values(plan[key], 0)
                assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes(), key
                seen += 1
    assert seen == len(plan)
    weights = synthetic.tensor_values(plan["gpt_neox.layers.1.mlp.dense_h_to_4h.weight"], 0).astype(np.float32)
    assert 2.0**-8 <= np.abs(weights).min() and np.abs(weights).max() < 2.0**-4
    assert 0.45 < (weights > 0).mean() < 0.55
    norms = synthetic.tensor_values(plan["gpt_neox.final_layer_norm.weight"], 0).astype(np.float32)
    assert 0.5 <= norms.min() and norms.max() < 2.0
    mask = synthetic.tensor_values(plan["gpt_neox.layers.0.attention.bias"], 0)
    assert np.array_equal(mask[0, 0], np.tril(np.ones((TINY["max_position_embeddings"],) * 2, dtype=bool)))

    import torch
    import transformers

    model = transformers.GPTNeoXForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert model.config.tie_word_embeddings and not model.config.use_parallel_residual
    assert model.lm_head.weight.data_ptr() == model.gpt_neox.embed_in.weight.data_ptr()
    qkv = plan["gpt_neox.layers.0.attention.query_key_value.weight"]
    assert np.array_equal(model.gpt_neox.layers[0].attention.query_key_value.weight.detach().numpy(),
                          synthetic.tensor_values(qkv, 0).astype(np.float32))


def test_synthetic_checkpoint_is_reused_verified_and_reproducible(tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    first = synthetic.ensure_checkpoint(out, TINY, max_shard_bytes=300_000, progress=False)
    assert synthetic.ensure_checkpoint(out, TINY, max_shard_bytes=300_000, progress=False)["action"] == "reused"
    shard = out / sorted(first["files"])[1]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1  # one flipped bit: the digest no longer matches, so the checkpoint is remade
    shard.write_bytes(bytes(data))
    again = synthetic.ensure_checkpoint(out, TINY, max_shard_bytes=300_000, progress=False)
    assert again["action"] == "regenerated" and again["files"] == first["files"]
    assert synthetic.checkpoint_digest(again) == synthetic.checkpoint_digest(first)
    other = synthetic.write_checkpoint(tmp_path / "seed1", TINY, seed=1, max_shard_bytes=300_000, progress=False)
    assert synthetic.checkpoint_digest(other) != synthetic.checkpoint_digest(first)


# ----------------------------------------------------------------------------- baseline


def _awkward_weights(rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols), dtype=np.float32) * 0.05).astype(np.float16)
    w[0] = 0  # all-zero groups: 0/0 in the quantizer
    w[1] = np.round(w[1] * 40) / 4  # exact ties for round-half-to-even
    w[2, :32] = np.float16(6e-8)  # a subnormal group: the scale underflows to zero
    w[3, 5] = np.float16(60000.0)  # one huge value dominating its group
    return w


def test_baseline_quantizer_matches_hf2mlc_reference() -> None:
    q = get_quantization("q4f16_0")
    w = _awkward_weights(96, 256, 0)
    words, scale = baseline.plain_quantize(w)
    ref_words, ref_scale = quantize_linear(w, q)  # KN layout: both transposed
    assert np.array_equal(words.T, ref_words)
    assert scale.T.tobytes() == ref_scale.tobytes()
    emb_words, emb_scale = quantize_embedding(w, q)
    assert np.array_equal(words, emb_words) and scale.tobytes() == emb_scale.tobytes()
    values = np.random.default_rng(1).standard_normal(4096).astype(np.float32)
    assert np.array_equal(baseline.f32_to_bf16(values), f32_to_bf16(values))


def test_baseline_reorders_qkv_like_mlc() -> None:
    heads, head_dim, hidden = 4, 3, 5
    rows = np.arange(3 * heads * head_dim)
    weight = np.repeat(rows[:, None], hidden, axis=1)
    out = baseline.reorder_qkv(weight, heads)
    # Hugging Face row (head h, part p, d) = h*3*head_dim + p*head_dim + d; MLC puts part-major first.
    expected = [h * 3 * head_dim + p * head_dim + d for p in range(3) for h in range(heads) for d in range(head_dim)]
    assert out[:, 0].tolist() == expected and (out == out[:, :1]).all()
    assert baseline.reorder_qkv(rows, heads).tolist() == expected


# ----------------------------------------------------------------------------- workflow helpers


def test_jobs_are_read_from_a_snakemake_log() -> None:
    log = """
Building DAG of jobs...
rule build:
    input: results/download/demo, results/weights/demo/q4f16_0
    output: results/build/demo/iphone-q4f16_0
    jobid: 3
    wildcards: model=demo, target=iphone, quant=q4f16_0
    resources: tmpdir=/tmp
localrule package:
    wildcards: model=demo, device=iphone
localrule all:
    input: results/package/demo/iphone
"""
    assert workflow_bench.jobs_in_log(log) == ["build[model=demo,target=iphone,quant=q4f16_0]", "package[model=demo,device=iphone]"]
    assert workflow_bench.jobs_in_log("Nothing to be done (all requested files are present and up to date).") == []


def _run(date: str, commit: str, load: float, sections: dict, errors: dict | None = None, scale: str = "full") -> dict:
    """A run's raw numbers as run.py writes them (only the keys merging and the report read)."""
    load_at = {"load_1m": load, "load_5m": load, "load_15m": load, "mem_available_gib": 20.0}
    return {"scale": scale, "shape": dict(TINY), "ffn_out_dtype": "float32", "settings": {"convert_repeats": 3},
            "machine": {"date": date, "commit": commit, "load_at_start": load_at}, "load_at_end": load_at,
            "errors": errors or {}, "section_seconds": {name: 1.0 for name in sections}, "sections": list(sections),
            **sections}


def test_a_partial_run_merges_into_the_last_runs_numbers() -> None:
    from benchmarks.run import merge_results

    full = _run("2026-12-01 18:58 UTC", "7e332d2", 7.5,
                {"checkpoint": {"action": "reused"}, "convert": {"q4f16_0": {"seconds": 24.7}},
                 "compile": {"host-q0f16": {"error": "boom"}}, "line": {"seconds": 1475.5}},
                errors={"compile host-q0f16": "boom", "line": "late"})
    assert "measured" not in full  # written before merging existed: one run measured everything
    anchor_only = _run("2026-12-01 19:44 UTC", "10cc9c8", 1.2, {"checkpoint": {"action": "reused"}, "anchor": {"ratios": {}}})
    merged = merge_results(full, anchor_only, ["checkpoint", "anchor"])
    assert merged["convert"] == full["convert"] and merged["line"] == full["line"] and merged["anchor"] == anchor_only["anchor"]
    assert merged["sections"] == ["checkpoint", "convert", "compile", "anchor", "line"]
    assert merged["measured"]["convert"]["commit"] == "7e332d2" and merged["measured"]["line"]["load_at_start"]["load_1m"] == 7.5
    assert merged["measured"]["anchor"]["commit"] == "10cc9c8" and merged["measured"]["checkpoint"]["date"].startswith("2026-12-01 19:44")
    assert merged["errors"] == full["errors"] and merged["last_run_sections"] == ["checkpoint", "anchor"]
    assert merged["machine"]["commit"] == "10cc9c8"  # the latest run's machine; each section keeps its own stamp
    assert "measured" not in full  # the previous run's numbers are not modified
    # a rerun section replaces its numbers and its errors; one that fails now loses its old numbers
    again = _run("2026-12-01 21:00 UTC", "abc1234", 0.3, {"compile": {"host-q0f16": {"seconds": 12.0}}}, errors={"line": "killed"})
    merged2 = merge_results(merged, again, ["compile", "line"])
    assert merged2["compile"] == {"host-q0f16": {"seconds": 12.0}} and "line" not in merged2
    assert merged2["errors"] == {"line": "killed"} and merged2["measured"]["line"]["commit"] == "abc1234"
    assert merged2["measured"]["anchor"]["commit"] == "10cc9c8" and merged2["convert"] == full["convert"]
    # another scale's numbers describe another model: nothing is kept
    tiny = _run("2026-12-01 21:05 UTC", "abc1234", 0.3, {"anchor": {"ratios": {}}}, scale="tiny")
    assert merge_results(merged2, tiny, ["anchor"])["sections"] == ["anchor"]


def test_ratios_against_llama_cpp_come_from_one_run() -> None:
    from benchmarks.run import merge_results

    side = {"convert": {"call_seconds": 20.0}, "speed": {"prefill_tokens_per_s": 15.0, "decode_tokens_per_s": 3.0}}
    anchor = {"threads": 2, "prompt_len": 32, "decode_tokens": 16, "quantization": "q4f16_0", "hf2mlc": side,
              "llama": {"quantize": {"call_seconds": 18.8}, "speed": {"prefill_tokens_per_s": 26.0, "decode_tokens_per_s": 8.5},
                        "gguf": {"seconds": 12.9, "bytes": 7.4e9}, "version": "0.3.36", "system_info": "AVX2 = 1"},
              "ratios": {"convert_time": 20.0 / 18.8, "prefill": 15.0 / 26.0, "decode": 3.0 / 8.5}}
    first = _run("2026-12-01 19:44 UTC", "10cc9c8", 1.2, {"anchor": anchor})
    row = next(r for r in report.goals_11(first) if r[0].startswith("q4f16_0 conversion"))
    assert row[2] == "1.06× (20.0 s vs 18.8 s, one run)" and row[3] == "**not met**"
    later = _run("2026-12-01 22:30 UTC", "abc1234", 0.2, {"convert": {"q4f16_0": {"seconds": 15.0}}})
    merged = merge_results(first, later, ["convert"])
    row = next(r for r in report.goals_11(merged) if r[0].startswith("q4f16_0 conversion"))
    # the newer hf2mlc time is reported beside the ratio, never divided by the older llama.cpp time
    assert row[2] == ("1.06× (20.0 s vs 18.8 s, one run); the convert section's 15.0 s (median) is from another run "
                      "(2026-12-01 22:30 UTC), not in this ratio")
    assert "0.80×" not in row[2] and report.mixed_runs(merged) and not report.mixed_runs(first)
    assert "not divided by this llama.cpp time" in report._anchor(merged) and "commit 10cc9c8" in report._anchor(merged)


def test_kept_notes_survive_a_rewrite() -> None:
    previous = "# R\n\n## Host prefill and decode\n\nold host\n\n## Workflow reruns\n\nold workflow\n"
    notes = f"{previous}\n{report.NOTES_HEADING}\n\nwhy not\n\n## Errors\n\nx\n"
    assert report._kept_notes(notes) == [report.NOTES_HEADING, "why not"] and report._kept_notes(previous) == []


def test_workflow_sync_copies_only_changes(tmp_path: Path) -> None:
    dest = tmp_path / "wf"
    first = workflow_bench.sync_workflow(REPO, dest)
    assert first > 10 and (dest / "Snakefile").read_bytes() == (REPO / "Snakefile").read_bytes()
    assert workflow_bench.sync_workflow(REPO, dest) == 0
    stale = dest / "rules" / "stale.smk"
    stale.write_text("# left over\n")
    (dest / "Snakefile").write_text("# edited\n")
    assert workflow_bench.sync_workflow(REPO, dest) == 1
    assert not stale.exists() and (dest / "Snakefile").read_bytes() == (REPO / "Snakefile").read_bytes()
    assert not list(dest.rglob("__pycache__"))


def test_line_run_reads_job_tables_disk_and_extrapolates(tmp_path: Path) -> None:
    results = tmp_path / "results"
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rel, row in (("reference/m.tsv", "120.50\t0:02:00\t2048.5\t1\t1\t1\t0\t0\t90\t230.1\n"),
                     ("evaluate/m/q4f16_0.tsv", "60.00\t0:01:00\t3000.0\t1\t1\t1\t0\t0\t90\t100.0\n"),
                     ("tokenizer/m.tsv", "1.00\t0:00:01\tNA\tNA\tNA\tNA\tNA\tNA\tNA\tNA\n")):
        (results / "benchmarks" / rel).parent.mkdir(parents=True, exist_ok=True)
        (results / "benchmarks" / rel).write_text(header + row)
    (results / "weights").mkdir()
    (results / "weights" / "w.bin").write_bytes(b"x" * 1_000_000)
    (results / "versions").mkdir()
    (results / "versions" / "w.bin").hardlink_to(results / "weights" / "w.bin")
    jobs = {(j["rule"], j["job"]): j for j in workflow_bench.benchmark_tables(results)}
    assert jobs[("evaluate", "m/q4f16_0")]["seconds"] == 60.0 and jobs[("reference", "m")]["max_rss_mb"] == 2048.5
    assert jobs[("tokenizer", "m")]["max_rss_mb"] is None and jobs[("reference", "m")]["cpu_seconds"] == 230.1
    disk = workflow_bench.disk_usage(results)
    assert disk["weights"] + disk["versions"] < 1_100_000  # the hard-linked file counts once
    assert disk["total"] >= sum(v for k, v in disk.items() if k != "total")
    line = {"cores": 2, "max_tokens": 1000, "tokens": 1000, "text": "eval_ja_long", "seconds": 600.0, "other_cores": 0.1,
            "jobs": list(jobs.values()), "reference": {"seconds": 120.5, "tokens": 1000}, "disk_bytes": disk,
            "evaluations": {"q4f16_0": {"seconds": 60.0, "tokens": 1000, "delta_perplexity_pct": 1.5, "top1_agreement": 0.9}}}
    ext = report.line_extrapolation(line)
    assert ext["per_quant"]["q4f16_0"]["total_s"] == pytest.approx(1805.0) and ext["all_s"] == pytest.approx(600 + 180.5 * 9)
    log = tmp_path / "reference.log"
    log.write_text("2026-12-01 19:14:04,749 INFO hf2mlc.reference_cache: reference: 1000 tokens of t in 3 rows\n"
                   "2026-12-01 19:14:10,662 INFO hf2mlc.reference: reference: layer 1/30, about 91 s left\n"
                   "2026-12-01 19:15:30,906 INFO hf2mlc.reference: reference: layer 30/30, about 0 s left\nloaded\n")
    bar = tmp_path / "evaluate.log"
    bar.write_text("[hf2mlc] evaluate: host library:  67%|###6   | 2/3 [01:15<00:37, 37.60s/row]\r"
                   "[hf2mlc] evaluate: host library: 100%|#######| 3/3 [01:37<00:00, 32.26s/row]\n")
    assert workflow_bench.scoring_seconds(log, "reference") == 86.2
    assert workflow_bench.scoring_seconds(bar, "evaluate") == 97.0 and workflow_bench.scoring_seconds(log, "evaluate") is None
    with_scoring = {**line, "evaluations": {"q4f16_0": {**line["evaluations"]["q4f16_0"], "scoring_seconds": 20.0}}}
    assert report.line_extrapolation(with_scoring)["per_quant"]["q4f16_0"]["evaluate_s"] == pytest.approx(60 + 20 * 9)
    rows = report.goals_11({"scale": "full", "line": line})
    assert rows[-3][3] == "**not met** (extrapolated)" and rows[-2][2].startswith("2.93 GiB (evaluate m/q4f16_0)")
    assert rows[-2][3] == "met" and "30.1 min (extrapolated from 1,000 tokens" in rows[-3][2]


def test_stand_in_tokenizer_is_padded_to_the_vocab_without_changing_encoding() -> None:
    import sentencepiece

    from shared_data import shared_file

    data = shared_file(*workflow_bench.STAND_IN_TOKENIZER).read_bytes()
    original = sentencepiece.SentencePieceProcessor(model_proto=data)
    padded = sentencepiece.SentencePieceProcessor(model_proto=workflow_bench.pad_sentencepiece(data, 51200))
    text = (REPO / "src" / "hf2mlc" / "data" / "eval_ja_long.txt").read_text(encoding="utf-8")[:3000]
    assert original.vocab_size() == 48586 and padded.vocab_size() == 51200
    assert padded.encode(text) == original.encode(text)
    assert padded.decode([51199]) == "<stand-in-51199>" and padded.id_to_piece(100) == original.id_to_piece(100)


def test_line_run_config_passes_the_schema(tmp_path: Path) -> None:
    from snakemake.utils import validate

    config = workflow_bench.stand_in_config(REPO, tmp_path, max_tokens=1000)
    validate(config, schema=str(REPO / "config" / "schema.yaml"))
    assert [m["evaluation"]["max_tokens"] for m in config["models"]] == [1000]


# ----------------------------------------------------------------------------- the harness itself


def _run_harness(work: Path, *args: str) -> tuple[dict, str]:
    results_md = work / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--scale", "tiny", "--work", str(work),
         "--results", str(results_md), *args],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads((work / "tiny" / "results-tiny.json").read_text()), results_md.read_text()


def test_harness_converts_and_matches_the_baseline_bit_for_bit(tmp_path: Path) -> None:
    results, text = _run_harness(tmp_path / "work", "--sections", "convert")
    assert results["errors"] == {}
    assert results["checkpoint"]["action"] == "generated" and results["checkpoint"]["weight_files"] > 1
    for quant in ("q4f16_0", "q0f16"):
        conv = results["convert"][quant]
        check = conv["bit_check"]
        assert check["tensors"] >= 14 and check["identical"] == check["tensors"], check
        assert len(conv["runs"]) == 2 and all(r["call_seconds"] > 0 for r in conv["runs"])
        assert conv["baseline"]["subset_bytes"] > 0 and conv["speedup"] > 0
        assert conv["peak_rss_mb"] > 10 and conv["output_bytes"] > 0
    # tensor-cache metadata of the tiny model: 4-bit weights plus fp16 scales, norms and biases
    assert 4.5 < results["convert"]["q4f16_0"]["bits_per_param"] < 8
    for needle in ("| CPU |", "| cores (usable) | ", "| memory |", "| date |", "load average at start", "Packages: python",
                   "## Goals (issue 6)", "bit for bit identical"):
        assert needle in text, needle
    # a later partial run keeps these numbers: merged into the raw file, the report rendered from it
    merged, text = _run_harness(tmp_path / "work", "--sections", "checkpoint")
    assert merged["convert"] == results["convert"] and merged["sections"] == ["checkpoint", "convert"]
    assert merged["measured"]["convert"] == {**results["measured"]["convert"]}
    assert merged["checkpoint"]["action"] == "reused" and merged["last_run_sections"] == ["checkpoint"]
    assert "bit for bit identical" in text and "The sections come from more than one run" in text


@pytest.mark.slow
def test_harness_compiles_and_runs_host_builds_against_transformers(tmp_path: Path) -> None:
    results, text = _run_harness(tmp_path / "work", "--sections", "convert,compile,host", "--targets", "host",
                                 "--convert-repeats", "1")
    assert results["errors"] == {}
    assert set(results["compile"]) == {"host-q4f16_0", "host-q0f16"}
    host = results["host"]
    for quant in ("q4f16_0", "q0f16"):
        assert host[quant]["prefill_tokens_per_s"] > 0 and host[quant]["decode_tokens_per_s"] > 0
        assert len(host[quant]["decode_seconds"]) == host["decode_tokens"] * host["repeats"]
    # the float16 build computes what transformers computes (float32) on the same checkpoint
    assert host["q0f16"]["vs_transformers"]["logits_max_rel_error"] < 2e-2
    assert host["q0f16"]["vs_transformers"]["top1_agrees"]
    assert "## Host prefill and decode" in text and "transformers, torch float32" in text
