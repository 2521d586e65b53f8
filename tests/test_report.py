"""The run's tables (pandas over Snakemake's benchmark files and the evaluation reports) and the plots."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pandas as pd
import pytest

from hf2mlc import plots
from hf2mlc.resources import DEMO_PARAMETERS, mem_mb
from hf2mlc.summary import read_benchmarks, read_evaluations, write_tables

REPO = Path(__file__).resolve().parents[1]
HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _benchmark(path: Path, runs: list[tuple[float, str, float]]) -> None:
    """A benchmark file as Snakemake writes it: one row per repeat (seconds, max_rss in MB, cpu seconds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{s}\t0:00:01\t{rss}\t1.0\t1.0\t1.0\t0.0\t0.0\t0.0\t{cpu}\n" for s, rss, cpu in runs)
    path.write_text(HEADER + rows, encoding="utf-8")


def _report(path: Path, quant: str, ref: float, ppl: float, top1: float, kl: float) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    report = {
        "quantization": quant,
        "reference": {"name": "transformers float32", "perplexity": ref},
        "build": {"name": f"hf2mlc {quant}", "perplexity": ppl},
        "delta_perplexity": round(ppl - ref, 6),
        "top1_agreement": top1,
        "kl_mean": kl,
        "kl_max": 10 * kl,
        "text": {"name": "heldout.txt", "tokens": 1068, "description": "held-out chats", "documents": 10},
    }
    (path / "report.json").write_text(json.dumps(report), encoding="utf-8")
    return path / "report.json"


@pytest.fixture
def results(tmp_path: Path) -> dict:
    bench = tmp_path / "benchmarks"
    _benchmark(bench / "convert" / "demo" / "q4f16_0.tsv", [(2.5, "300.5", 2.0), (3.5, "420.25", 3.0)])
    _benchmark(bench / "package" / "demo" / "iphone.tsv", [(4.0, "44.1", 0.5)])
    _benchmark(bench / "download" / "demo.tsv", [(9.0, "-", 1.0)])  # RSS not measured
    _benchmark(bench / "summary" / "tables.tsv", [(1.0, "10", 0.1)])  # the tables job's own: left out
    reports = {
        "demo/q4f16_0": _report(tmp_path / "evaluate" / "demo" / "q4f16_0", "q4f16_0", 1.44238, 1.443774, 0.985955, 0.001496),
        "demo/q0f16": _report(tmp_path / "evaluate" / "demo" / "q0f16", "q0f16", 1.44238, 1.442415, 0.998127, 0.0000002),
    }
    bundles = {"package/demo/iphone": {"model": "demo", "quantization": "q4f16_0"}}
    return {"bench": bench, "reports": reports, "bundles": bundles, "tmp": tmp_path}


def test_benchmarks_become_one_row_per_job(results: dict) -> None:
    jobs = read_benchmarks(results["bench"], exclude=[results["bench"] / "summary" / "tables.tsv"]).set_index("job")
    assert list(jobs.index) == ["convert/demo/q4f16_0", "download/demo", "package/demo/iphone"]
    convert = jobs.loc["convert/demo/q4f16_0"]
    assert convert["rule"] == "convert"
    assert convert["wall_s"] == statistics.mean([2.5, 3.5]) and convert["cpu_s"] == statistics.mean([2.0, 3.0])
    assert convert["max_rss_mib"] == max(300.5, 420.25)
    assert pd.isna(jobs.loc["download/demo", "max_rss_mib"])


def test_tables_join_each_bundle_with_its_quality(results: dict) -> None:
    summary_tsv, quality_tsv = results["tmp"] / "summary.tsv", results["tmp"] / "quality.tsv"
    write_tables(
        benchmarks_dir=results["bench"],
        reports=results["reports"],
        bundles=results["bundles"],
        summary_tsv=summary_tsv,
        quality_tsv=quality_tsv,
        exclude=[results["bench"] / "summary" / "tables.tsv"],
    )
    quality = pd.read_csv(quality_tsv, sep="\t")
    assert list(quality["quantization"]) == ["q0f16", "q4f16_0"]
    q4 = quality.set_index("quantization").loc["q4f16_0"]
    assert q4["perplexity"] == pytest.approx(1.443774) and q4["delta_perplexity"] == pytest.approx(0.001394)
    assert q4["kl_max"] == pytest.approx(0.01496) and q4["tokens"] == 1068
    summary = pd.read_csv(summary_tsv, sep="\t").set_index("job")
    bundle = summary.loc["package/demo/iphone"]
    assert bundle["quantization"] == "q4f16_0" and bundle["top1_agreement"] == pytest.approx(0.985955)
    assert bundle["wall_s"] == 4.0 and bundle["max_rss_mib"] == pytest.approx(44.1)
    assert pd.isna(summary.loc["convert/demo/q4f16_0", "perplexity"])  # only bundles carry quality
    assert read_evaluations(results["reports"]).shape == (2, len(quality.columns))


def test_every_plot_has_a_caption_and_draws_the_same_png_twice(results: dict) -> None:
    captions = sorted(p.stem for p in (REPO / "report" / "plots").glob("*.rst"))
    assert captions == sorted(plots.PLOTS)
    tables = {"jobs": read_benchmarks(results["bench"]), "quality": read_evaluations(results["reports"])}
    for name in plots.PLOTS:
        first, second = results["tmp"] / f"{name}-1.png", results["tmp"] / f"{name}-2.png"
        plots.draw(name, tables, first)
        plots.draw(name, tables, second)
        data = first.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert data == second.read_bytes(), name


def test_a_new_plot_is_one_registration(results: dict) -> None:
    @plots.plot("wall-time-test")
    def wall_time(tables):
        figure, axis = plots.plt.subplots()
        axis.barh(tables["jobs"]["job"], tables["jobs"]["wall_s"])
        return figure

    try:
        out = results["tmp"] / "wall.png"
        plots.draw("wall-time-test", {"jobs": read_benchmarks(results["bench"])}, out)
        assert out.read_bytes()[:4] == b"\x89PNG"
        with pytest.raises(ValueError, match="twice"):
            plots.plot("wall-time-test")(wall_time)
    finally:
        plots.PLOTS.pop("wall-time-test")


# ---------------------------------------------------------------- end to end, on the demo workflow's run


@pytest.fixture(scope="module")
def q4f16_1_run(demo_workflow: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The demo run copied, then its iPhone bundle rebuilt in q4f16_1 (.test/config/demo-iphone-q4f16_1.yaml),
    the tables and plots made, and Snakemake's HTML report written: what CI checks of the report."""
    import shutil

    from workflow_helpers import planned_jobs, snakemake

    work = tmp_path_factory.mktemp("q4f16_1") / "wf"
    shutil.copytree(demo_workflow["work"], work, symlinks=True, ignore=shutil.ignore_patterns("locks", "incomplete"))
    config = ("--configfile", ".test/config/demo-iphone-q4f16_1.yaml")
    jobs = planned_jobs(work, "summary", *config)
    run = snakemake(work, "summary", "--cores", "2", *config)
    report = snakemake(work, "summary", "--report", "report.html", *config)
    return {"work": work, "jobs": jobs, "run": run, "report": report}


@pytest.mark.slow
def test_q4f16_1_config_reruns_only_the_iphone_path(q4f16_1_run: dict) -> None:
    """The test config differs from the demo's entry in the iPhone quantization only: the reference, the
    Mac path and q4f16_0 (the default iPhone quantization) are reused, not rebuilt."""
    path = [f"{job}[model=demo,{wildcards}quant=q4f16_1]" for job, wildcards in (
        ("check", ""), ("compile", "target=host,"), ("compile", "target=iphone,"), ("convert", ""), ("evaluate", ""))]
    summary = [f"plot[plot={name}]" for name in plots.PLOTS] + ["summary", "tables"]
    assert q4f16_1_run["jobs"] == sorted([*path, "package[model=demo,device=iphone]", *summary])


@pytest.mark.slow
def test_q4f16_1_iphone_bundle_of_the_demo(q4f16_1_run: dict) -> None:
    package = q4f16_1_run["work"] / "results" / "package" / "demo" / "iphone"
    model_id = "hf2mlc-demo-gpt-neox-q4f16_1-MLC"
    chat = json.loads((package / "bundle" / model_id / "mlc-chat-config.json").read_text(encoding="utf-8"))
    assert chat["quantization"] == "q4f16_1"
    app = json.loads((package / "bundle" / "mlc-app-config.json").read_text(encoding="utf-8"))
    assert [m["model_id"] for m in app["model_list"]] == [model_id]
    libs = sorted(p.name for p in (package / "lib").iterdir())
    assert any(name.endswith(".tar") for name in libs), libs
    cache = json.loads((package / "bundle" / model_id / "tensor-cache.json").read_text(encoding="utf-8"))
    names = {r["name"] for shard in cache["records"] for r in shard["records"]}
    assert "gpt_neox.layers.0.attention.query_key_value.q_weight" in names


@pytest.mark.slow
def test_summary_tables_of_the_run(q4f16_1_run: dict) -> None:
    results = q4f16_1_run["work"] / "results"
    jobs = pd.read_csv(results / "summary.tsv", sep="\t").set_index("job")
    for job in ("download/demo", "convert/demo/q4f16_1", "package/demo/iphone", "package/demo/mac"):
        assert job in jobs.index, sorted(jobs.index)
        # Snakemake samples memory after a delay, so a job of well under a second may record 0 MB: the
        # summary must hold what the job's own benchmark file says, not a guess.
        tsv = pd.read_csv(results / "benchmarks" / f"{job}.tsv", sep="\t", na_values=["-", "NA"])
        assert jobs.loc[job, "wall_s"] == pytest.approx(tsv["s"].mean()) and jobs.loc[job, "wall_s"] > 0, job
        assert jobs.loc[job, "max_rss_mib"] == pytest.approx(tsv["max_rss"].max(), nan_ok=True), job
    assert (jobs["max_rss_mib"] > 0).sum() >= len(jobs) // 2, jobs["max_rss_mib"]  # jobs of seconds are sampled
    quality = pd.read_csv(results / "quality.tsv", sep="\t").set_index("quantization")
    assert set(quality.index) == {"q0f16", "q4f16_1"}
    report = json.loads((results / "evaluate" / "demo" / "q4f16_1" / "report.json").read_text(encoding="utf-8"))
    assert quality.loc["q4f16_1", "perplexity"] == pytest.approx(report["build"]["perplexity"])
    # Every job stayed inside the memory its rule asks a cluster for (hf2mlc.resources, at the demo's size).
    for job, row in jobs.iterrows():
        assert row["max_rss_mib"] * 2**20 / 1e6 <= mem_mb(row["rule"], DEMO_PARAMETERS), job
    assert jobs.loc["package/demo/iphone", "quantization"] == "q4f16_1"
    assert jobs.loc["package/demo/iphone", "top1_agreement"] == pytest.approx(report["top1_agreement"])


@pytest.mark.slow
def test_snakemake_report_holds_the_plots(q4f16_1_run: dict) -> None:
    html = (q4f16_1_run["work"] / "report.html").read_text(encoding="utf-8")
    assert len(html) > 100_000
    for name in plots.PLOTS:
        assert f"{name}.png" in html
    assert "iVBORw0KGgo" in html  # a PNG, embedded (base64 of its signature)
    caption = (REPO / "report" / "plots" / "quality.rst").read_text(encoding="utf-8").split()[:6]
    assert " ".join(caption) in html
