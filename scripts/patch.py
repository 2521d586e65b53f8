"""Snakemake entry point of rule patch (rules/patch.smk): hf2mlc.stages.patch through the one adapter."""

from _adapter import run

run("patch")
