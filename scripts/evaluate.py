"""Snakemake entry point of rule evaluate (rules/evaluate.smk): hf2mlc.stages.evaluate through the one adapter."""

from _adapter import run

run("evaluate")
