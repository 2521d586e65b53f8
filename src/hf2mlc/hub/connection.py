"""How hf2mlc talks to the Hub: the endpoint, the token, and one configured ``HfApi``.

The endpoint is read from ``HF_ENDPOINT`` at call time (not only when huggingface_hub was imported),
so a mirror or a local test server set in the environment of a running process is honoured by every
call this package makes.  The token is never printed, logged or written: it only travels in the
``Authorization`` header that huggingface_hub builds.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import huggingface_hub
from huggingface_hub import HfApi, constants

from .. import __version__

LIBRARY_NAME = "hf2mlc"


def hub_endpoint() -> str:
    """The Hub base URL: ``HF_ENDPOINT`` if set, else huggingface_hub's default."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def public_endpoint(endpoint: str) -> str:
    """The endpoint without any ``user:password@`` part, fit for manifests and messages."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def resolve_token() -> str | None:
    """The user's token: ``HF_TOKEN`` or the one ``hf auth login`` stored; ``None`` when there is none."""
    return huggingface_hub.get_token() or None


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE=1`` is in force (huggingface_hub then refuses every request)."""
    return constants.is_offline_mode()


def make_api(endpoint: str, token: str | None) -> HfApi:
    # token=False (not None) when there is none: huggingface_hub would otherwise look for one again.
    return HfApi(
        endpoint=endpoint,
        token=token if token else False,
        library_name=LIBRARY_NAME,
        library_version=__version__,
    )
