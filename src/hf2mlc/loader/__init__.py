"""Readers of source checkpoints; each yields tensors one at a time under MLC's parameter names."""

from __future__ import annotations

from .huggingface import HuggingFaceWeights, SourceReader, find_weight_files, reorder_qkv

__all__ = ["HuggingFaceWeights", "SourceReader", "find_weight_files", "reorder_qkv"]
