"""Snakemake entry point of rule reference_answers (rules/reference.smk): hf2mlc.stages.reference_answers through the one adapter."""

from _adapter import run

run("reference_answers")
