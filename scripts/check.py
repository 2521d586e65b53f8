"""Snakemake entry point of rule check (rules/check.smk): hf2mlc.stages.check through the one adapter."""

from _adapter import run

run("check")
