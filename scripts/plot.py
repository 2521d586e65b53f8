"""Snakemake entry point of rule plot (rules/report.smk): hf2mlc.stages.plot through the one adapter."""

from _adapter import run

run("plot")
