"""Snakemake entry point of rule reference (rules/reference.smk): hf2mlc.stages.reference through the one adapter."""

from _adapter import run

run("reference")
