# The run's tables and the report's plots (snakemake --report report.html summary).
# One plot per caption in report/plots/ (its function in src/hf2mlc/plots.py).
PLOTS = sorted(p.stem for p in (Path(workflow.basedir) / "report" / "plots").glob("*.rst"))
# The tables rule's own benchmark, left out of the job table (an earlier run's would be stale).
TABLES_BENCHMARK = f"{RESULTS}/benchmarks/summary/tables.tsv"


rule tables:
    """The job table (benchmarks, with each bundle's quality) and the quality table, read with pandas."""
    input:
        bundles=bundles("iphone") + bundles("mac"),
        evaluations=evaluations(),
    output:
        summary=report(f"{RESULTS}/summary.tsv", caption="../report/summary.rst", category="Run"),
        quality=report(f"{RESULTS}/quality.tsv", caption="../report/quality.rst", category="Quality"),
    params:
        # "<model>/<quant>" -> its report.json; "package/<model>/<device>" -> the bundle's model and quantization
        reports=lambda wildcards: {
            f"{m}/{q}": f"{evaluate_dir(m, q)}/report.json" for m in ENABLED for q in host_quants(m)
        },
        bundles=lambda wildcards: {
            package_dir(m, d).removeprefix(f"{RESULTS}/"): {"model": m, "quantization": device_quant(m, d)}
            for m in ENABLED
            for d in DEVICES
        },
        benchmarks=f"{RESULTS}/benchmarks",
        own_benchmark=TABLES_BENCHMARK,
        code=code_version("summary.py"),
    log:
        "results/logs/summary/tables.log",
    benchmark:
        TABLES_BENCHMARK
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/tables.py"


rule plot:
    """One of the report's plots, drawn from the tables."""
    input:
        summary=rules.tables.output.summary,
        quality=rules.tables.output.quality,
    output:
        report(
            f"{RESULTS}/report/{{plot}}.png",
            caption="../report/plot.rst",
            category="Quality",
            labels={"plot": "{plot}"},
        ),
    wildcard_constraints:
        plot="|".join(PLOTS),
    params:
        caption=lambda wildcards: (Path(workflow.basedir) / "report" / "plots" / f"{wildcards.plot}.rst").read_text(
            encoding="utf-8"
        ),
        code=code_version("plots.py", "summary.py"),
    log:
        "results/logs/plot/{plot}.log",
    benchmark:
        "results/benchmarks/plot/{plot}.tsv"
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/plot.py"
