"""Snakemake entry point of rule upload (rules/upload.smk): hf2mlc.stages.upload through the one adapter."""

from _adapter import run

run("upload")
