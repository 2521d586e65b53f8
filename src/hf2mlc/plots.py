"""The report's plots, drawn with matplotlib from the run's tables (:mod:`hf2mlc.summary`).

Each plot is a function registered under a name with :func:`plot`; its caption is ``report/plots/<name>.rst``
and the workflow's ``plot`` rule draws every registered plot into ``results/report/<name>.png``. Adding a
plot is one decorated function and its caption file (tests/test_report.py checks the two agree).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a build machine or a cluster node

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

#: The tables a plot can read: "jobs" (results/summary.tsv), "quality" (results/quality.tsv).
Tables = dict[str, pd.DataFrame]
PlotFunction = Callable[[Tables], plt.Figure]
PLOTS: dict[str, PlotFunction] = {}


def plot(name: str) -> Callable[[PlotFunction], PlotFunction]:
    """Register a plot under ``name`` (its file and caption names)."""

    def register(function: PlotFunction) -> PlotFunction:
        if name in PLOTS:
            raise ValueError(f"plot {name!r} is registered twice")
        PLOTS[name] = function
        return function

    return register


def read_tables(summary_tsv: str | os.PathLike[str], quality_tsv: str | os.PathLike[str]) -> Tables:
    return {"jobs": pd.read_csv(summary_tsv, sep="\t"), "quality": pd.read_csv(quality_tsv, sep="\t")}


def draw(name: str, tables: Tables, out: str | os.PathLike[str]) -> None:
    """Draw plot ``name`` into ``out`` (PNG; no timestamp in its metadata, so reruns give the same bytes)."""
    if name not in PLOTS:
        raise KeyError(f"no plot named {name!r}; registered: {sorted(PLOTS)}")
    figure = PLOTS[name](tables)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png", dpi=120, metadata={"Software": None})
    plt.close(figure)


@plot("quality")
def quality(tables: Tables) -> plt.Figure:
    """What quantization cost against the float32 reference, one bar per model and quantization: the
    perplexity increase, how often the next-token choice differs, and the mean KL divergence."""
    frame = tables["quality"].sort_values(["model", "quantization"]).assign(
        perplexity_increase_pct=lambda f: 100 * f["delta_perplexity"] / f["reference_perplexity"],
        top1_disagreement_pct=lambda f: 100 * (1 - f["top1_agreement"]),
    )
    models = list(dict.fromkeys(frame["model"]))
    quants = sorted(frame["quantization"].unique())
    panels = (
        ("perplexity_increase_pct", "perplexity increase over float32 (%)"),
        ("top1_disagreement_pct", "next-token choices that differ (%)"),
        ("kl_mean", "mean KL divergence (nats)"),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(12, 3.6), layout="constrained")
    width = 0.8 / max(len(models), 1)
    for axis, (column, title) in zip(axes, panels, strict=True):
        for m, model in enumerate(models):
            rows = frame[frame["model"] == model].set_index("quantization").reindex(quants)
            axis.bar([q + m * width for q in range(len(quants))], rows[column], width=width, label=model)
        axis.set_xticks([q + width * (len(models) - 1) / 2 for q in range(len(quants))], quants)
        axis.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    return figure

