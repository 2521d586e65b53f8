"""Turn huggingface_hub and network exceptions into one-line :class:`UserError` messages.

huggingface_hub reports the same cause in several shapes (a 401 may arrive as a
``RepositoryNotFoundError``, an ``HfHubHTTPError`` or wrapped in a ``LocalEntryNotFoundError`` when it
fell back to the cache), so the whole exception chain is searched for the most telling cause.  Messages
name the repository and revision and say what to do; they never contain a token.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import UserError
from .connection import endpoint_has_credentials, redact

LOGIN_HINT = "set HF_TOKEN or run `hf auth login`"


def exception_chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending = [err]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def _status(err: HfHubHTTPError) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def explain(err: BaseException, *, target: str, doing: str, endpoint: str, web_url: str) -> UserError | None:
    """A :class:`UserError` for a Hub or network failure, or ``None`` when ``err`` is something else (a bug).

    ``target`` names the repo (``hf://owner/name@rev``), ``doing`` the action ("downloading", "uploading"),
    ``web_url`` the repo's page, where the user can accept terms or look up revisions.
    """
    user = _explain(err, target=target, doing=doing, endpoint=endpoint, web_url=web_url)
    return None if user is None else UserError(redact(str(user)))


def _explain(err: BaseException, *, target: str, doing: str, endpoint: str, web_url: str) -> UserError | None:
    causes = list(exception_chain(err))
    http = next((e for e in causes if isinstance(e, HfHubHTTPError)), None)
    if http is not None:
        if _status(http) == 401 and endpoint_has_credentials():
            return UserError(
                f"{target}: the Hub at {endpoint} answered HTTP 401 while {doing}. HF_ENDPOINT carries a user name "
                "and password, which the HTTP client sends in place of the token: check them, or remove them from "
                f"HF_ENDPOINT to authenticate with the token ({LOGIN_HINT})."
            )
        return _explain_http(http, target=target, doing=doing, web_url=web_url)
    network = next((e for e in causes if isinstance(e, httpx2.TransportError)), None)
    if network is not None:
        offline_hint = (
            "; to build from files already in the Hugging Face cache, set HF_HUB_OFFLINE=1"
            if doing == "downloading" else ""
        )
        return UserError(
            f"{target}: cannot reach the Hub at {endpoint} while {doing} ({type(network).__name__}: {network}). "
            f"Check the network connection and HF_ENDPOINT{offline_hint}."
        )
    return None


def _explain_http(err: HfHubHTTPError, *, target: str, doing: str, web_url: str) -> UserError:
    status = _status(err)
    if isinstance(err, GatedRepoError):
        return UserError(
            f"{target} is a gated repository and this account has no access yet (HTTP {status}): accept its "
            f"terms at {web_url}, then {LOGIN_HINT} with a token of that account."
        )
    if isinstance(err, RepositoryNotFoundError):
        if status == 401:
            return UserError(
                f"{target}: repository not found, or it is private and needs a token (HTTP 401). Check the repo "
                f"id; if the repo is private or gated, {LOGIN_HINT}."
            )
        return UserError(
            f"{target}: repository not found (HTTP {status}). Check the repo id (owner/name) for typos; if it is "
            f"private, make sure your token can read it ({LOGIN_HINT})."
        )
    if isinstance(err, RevisionNotFoundError):
        return UserError(
            f"{target}: revision not found (HTTP {status}). Use a branch, tag or full commit sha that exists "
            f"(see {web_url}/commits/main)."
        )
    if isinstance(err, RemoteEntryNotFoundError):
        return UserError(
            f"{target}: a file listed by the Hub could not be fetched (HTTP {status}): {_first_line(err)}. "
            "The revision may have changed while downloading; pin a commit sha and run again."
        )
    if status == 401:
        return UserError(
            f"{target}: the Hub rejected the token while {doing} (HTTP 401). {LOGIN_HINT[0].upper()}"
            f"{LOGIN_HINT[1:]} with a valid token."
        )
    if status == 403:
        return UserError(
            f"{target}: access denied while {doing} (HTTP 403). The token lacks permission: reading needs access "
            "to the repo, uploading needs a token with write access to its namespace."
        )
    if status == 429:
        return UserError(f"{target}: the Hub rate-limited this client while {doing} (HTTP 429); wait and run again.")
    if status is not None and status >= 500:
        return UserError(
            f"{target}: the Hub answered HTTP {status} while {doing}, also after retries; run again later "
            "(https://status.huggingface.co)."
        )
    return UserError(f"{target}: the Hub refused the request while {doing} (HTTP {status}): {_first_line(err)}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
