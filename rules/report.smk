# The run's tables and the report's plots (snakemake --report report.html summary).
# One plot per caption in report/plots/ (its function in src/hf2mlc/plots.py).
PLOTS = sorted(p.stem for p in (WORKFLOW_DIR / "report" / "plots").glob("*.rst"))
# The tables rule's own benchmark, left out of the job table (an earlier run's would be stale).
TABLES_BENCHMARK = benchmark_file("summary", "tables")


rule tables:
    """The job table (benchmarks, with each bundle's quality) and the quality table, read with pandas."""
    input:
        bundles("iphone"),
        bundles("mac"),
        evaluations(),
    output:
        summary=report(summary_table(), caption="../report/summary.rst", category="Run"),
        quality=report(quality_table(), caption="../report/quality.rst", category="Quality"),
    log:
        log_file("summary", "tables"),
    benchmark:
        TABLES_BENCHMARK
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=mem_mb("tables"),
    params:
        # "<model>/<quant>" -> its report.json; a package job (named as its benchmark file names it,
        # "package/<model>/<device>") -> the bundle's model and quantization
        reports=lambda wildcards: {
            f"{m}/{q}": f"{evaluate_dir(m, q)}/{EVALUATION_REPORT}" for m in ENABLED for q in host_quants(m)
        },
        bundles=lambda wildcards: {
            f"package/{m}/{d}": {"model": m, "quantization": device_quant(m, d)} for m in ENABLED for d in DEVICES
        },
        benchmarks=benchmarks_dir(),
        own_benchmark=TABLES_BENCHMARK,
        code=code_version("tables"),
    script:
        "../scripts/tables.py"


rule plot:
    """One of the report's plots, drawn from the tables."""
    input:
        summary=rules.tables.output.summary,
        quality=rules.tables.output.quality,
    output:
        png=report(plot_file("{plot}"), caption="../report/plot.rst", category="Quality", labels={"plot": "{plot}"}),
    log:
        log_file("plot", "{plot}"),
    benchmark:
        benchmark_file("plot", "{plot}")
    wildcard_constraints:
        plot="|".join(PLOTS),
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=mem_mb("plot"),
    params:
        name="{plot}",
        # The caption of report/plot.rst (a template): this plot's own, report/plots/<plot>.rst.
        caption=lambda wildcards: (WORKFLOW_DIR / "report" / "plots" / f"{wildcards.plot}.rst").read_text(
            encoding="utf-8"
        ),
        code=code_version("plot"),
    script:
        "../scripts/plot.py"
