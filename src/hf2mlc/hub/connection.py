"""How hf2mlc talks to the Hub: the endpoint, the token, and one configured ``HfApi``.

The endpoint is read from ``HF_ENDPOINT`` at call time (not only when huggingface_hub was imported),
so a mirror or a local test server set in the environment of a running process is honoured by every
call this package makes.  The token is never printed, logged or written: it only travels in the
``Authorization`` header that huggingface_hub builds.

An endpoint may carry a user name and password (``http://user:pw@mirror``, for a mirror behind basic
auth).  The HTTP client logs every request URL at INFO, so while hf2mlc talks to the Hub (a download, an
upload: :func:`redacted_logs` around each) a log-record factory masks URL credentials in every log line of
the process, whichever logger or handler it goes to, and the process's own factory is put back after;
messages built here use :func:`public_endpoint` or :func:`redact`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import huggingface_hub
from huggingface_hub import HfApi, constants

from .. import __version__

LIBRARY_NAME = "hf2mlc"
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")


def redact(text: str) -> str:
    """``text`` with the ``user:password@`` part of every URL in it replaced by ``***@``."""
    return _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)


def endpoint_has_credentials(endpoint: str | None = None) -> bool:
    return bool(urlsplit(endpoint or hub_endpoint()).username)


@contextlib.contextmanager
def redacted_logs() -> Iterator[None]:
    """Mask URL credentials in every log record made while the block runs (a decorator too).

    A record factory, not a filter on hf2mlc's handlers: the HTTP client's records also reach handlers
    hf2mlc never installed (a caller's, pytest's). The factory in place before is restored on the way out
    (unless another was installed on top meanwhile, which then keeps ours in its chain)."""
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's problem, reported by it
            return record
        if "@" in message and _URL_CREDENTIALS.search(message):
            record.msg, record.args = redact(message), ()
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        if logging.getLogRecordFactory() is factory:
            logging.setLogRecordFactory(previous)


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

