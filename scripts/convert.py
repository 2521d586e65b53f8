"""Snakemake entry point of rule convert (rules/convert.smk): hf2mlc.stages.convert through the one adapter."""

from _adapter import run

run("convert")
