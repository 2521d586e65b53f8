"""Snakemake entry point of rule download (rules/download.smk): hf2mlc.stages.download through the one adapter."""

from _adapter import run

run("download")
