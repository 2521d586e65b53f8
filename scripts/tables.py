"""Snakemake entry point of rule tables (rules/report.smk): hf2mlc.stages.tables through the one adapter."""

from _adapter import run

run("tables")
