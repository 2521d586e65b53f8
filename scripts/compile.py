"""Snakemake entry point of rule compile (rules/compile.smk): hf2mlc.stages.compile through the one adapter."""

from _adapter import run

run("compile")
