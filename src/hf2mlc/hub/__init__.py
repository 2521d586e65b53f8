"""Hugging Face Hub out: safe, idempotent, verified uploads of packaged bundles.

``upload`` publishes a packaged bundle once per version id; ``resolve_token`` finds the user's token.
The connection, error and digest helpers here are shared with the download side, :mod:`hf2mlc.sources`.
"""

from __future__ import annotations

from .connection import hub_endpoint, resolve_token
from .publish import upload

__all__ = ["hub_endpoint", "resolve_token", "upload"]
