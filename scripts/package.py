"""Snakemake entry point of rule package (rules/package.smk): hf2mlc.stages.package through the one adapter."""

from _adapter import run

run("package")
