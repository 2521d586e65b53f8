"""Hugging Face Hub in and out: pinned, verified downloads and safe, idempotent uploads.

``parse_source`` reads what users write (``hf://owner/name@rev``, a directory, ``demo``);
``download`` fetches a model through the Hugging Face cache into a stage directory with a manifest;
``upload`` publishes a packaged bundle once per version id; ``resolve_token`` finds the user's token.
"""

from __future__ import annotations

from .connection import hub_endpoint, resolve_token
from .fetch import download
from .selection import Selection, select_build_files
from .source import Source, parse_source
from .publish import upload

__all__ = [
    "Selection",
    "Source",
    "download",
    "hub_endpoint",
    "parse_source",
    "resolve_token",
    "select_build_files",
    "upload",
]
