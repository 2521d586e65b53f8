"""Readers of source checkpoints, one tensor at a time; an architecture's names live with its model
(:mod:`hf2mlc.model.gpt_neox.loader`)."""

from __future__ import annotations

from .huggingface import HuggingFaceWeights, TensorInfo, find_weight_files, read_safetensors_header

__all__ = ["HuggingFaceWeights", "TensorInfo", "find_weight_files", "read_safetensors_header"]
