"""Where models come from: a pinned Hugging Face Hub revision, a local checkpoint directory, or the demo.

``parse_source`` reads what users write (``hf://owner/name@rev``, a directory, ``demo``); ``download``
materializes the files a build needs into a stage directory with a manifest.  Publishing bundles is the
other direction and lives in :mod:`hf2mlc.hub`.
"""

from __future__ import annotations

from .fetch import download
from .selection import Selection, select_build_files
from .source import Source, parse_source

__all__ = ["Selection", "Source", "download", "parse_source", "select_build_files"]
