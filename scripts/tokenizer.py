"""Snakemake entry point of rule tokenizer (rules/tokenizer.smk): hf2mlc.stages.tokenizer through the one adapter."""

from _adapter import run

run("tokenizer")
