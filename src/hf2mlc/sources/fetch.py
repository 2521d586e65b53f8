"""Fetch a model into a stage directory: pinned to a commit, verified, and described by a manifest.

Files come through the Hugging Face cache (``snapshot_download``), so a second build, another model
directory or an offline run (``HF_HUB_OFFLINE=1``) reuses what was fetched once, and an interrupted run
fetches only the files it had not finished (huggingface_hub resumes a dropped transfer with an HTTP
Range request).  The stage directory gets its own files: reflinks where the file system has them (no
second copy of 7 GB of weights), copies otherwise; never hard links or symlinks, so that it stays valid
when the cache is pruned and an edit of either copy cannot silently change the other (a byte flipped
in the cache would otherwise become the converted weights while the manifest still vouched for them).

Each file is checked against what the Hub publishes for it: the LFS sha256 for large files, the git
blob id for the others.  A file that fails is deleted from the cache, so that running again downloads
it afresh instead of failing on the same bad bytes forever.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx2
from huggingface_hub import HfApi, RepoFile, constants, get_cached_repo_tree, snapshot_download
from huggingface_hub.errors import (
    CachedRepoTreeNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RevisionResolutionError,
)

from .. import __version__
from ..errors import UserError
from ..manifest import MANIFEST_NAME, Stopwatch, atomic_output_dir, write_json, write_manifest
from ..hub.connection import LIBRARY_NAME, hub_endpoint, is_offline, make_api, public_endpoint, redacted_logs, resolve_token
from ..hub.digests import SHA1_HEX, SHA256_HEX, git_blob_sha1
from ..hub.failures import exception_chain, explain
from .selection import Selection, check_weight_index, select_build_files
from .local import download_local, place_copy
from .source import Source

log = logging.getLogger(__name__)

#: Waits between retries of the Hub calls huggingface_hub does not retry itself (repo_info, a file GET's 5xx).
RETRY_WAITS_S = (1.0, 2.0, 4.0)
#: Parallel file transfers; downloads are bound by the network, not by the 2 cores of a small machine.
MAX_WORKERS = 4
#: A partial download untouched for this long belongs to a run that was killed.
STALE_PARTIAL_S = 3600.0

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class ListedFile:
    """What the Hub (or the cache's copy of its listing) says about one file."""

    size: int | None
    blob_id: str | None = None
    lfs_sha256: str | None = None


def download(
    source: Source, out_dir: Path, *, token: str | None = None, cache_dir: Path | None = None
) -> dict[str, Any]:
    """Materialize the files a build needs from ``source`` in ``out_dir`` and return its manifest.

    ``token`` defaults to :func:`resolve_token`; ``cache_dir`` to huggingface_hub's cache (``HF_HUB_CACHE``).
    """
    if source.kind == "hf":
        return _download_hub(source, Path(out_dir), token=token, cache_dir=cache_dir)
    if source.kind == "local":
        return download_local(source, Path(out_dir))
    if source.kind == "demo":
        raise ValueError("the demo model is made by hf2mlc.demo.make_demo_model, not downloaded")
    raise ValueError(f"unknown source kind {source.kind!r}")


# --- Hub ----------------------------------------------------------------------------------------------


@redacted_logs()
def _download_hub(source: Source, out_dir: Path, *, token: str | None, cache_dir: Path | None) -> dict[str, Any]:
    assert source.repo_id is not None and source.revision is not None
    endpoint = hub_endpoint()
    token = token or resolve_token()
    cache = Path(cache_dir or constants.HF_HUB_CACHE).expanduser().resolve()
    target = source.uri
    web_url = f"{public_endpoint(endpoint)}/{source.repo_id}"
    offline = is_offline()
    api = make_api(endpoint, token)
    watch = Stopwatch()
    try:
        with watch("resolve"):
            if offline:
                commit, listing = _cached_listing(api, source, cache)
            else:
                commit, listing = _remote_listing(api, source)
                _remember_ref(cache, source.repo_id, source.revision, commit)
        selection = select_build_files(listing, where=target)
        total = sum(listing[f].size or 0 for f in selection.files)
        log.info(
            "%s is commit %s; fetching %d files (%.1f MB), leaving %d the build does not need",
            target, commit, len(selection.files), total / 1e6, len(selection.skipped),
        )
        with watch("fetch"):
            _remove_stale_partials(_storage_folder(cache, source.repo_id))
            snapshot = Path(
                _retrying(lambda: snapshot_download(
                    source.repo_id,
                    revision=commit,
                    cache_dir=cache,
                    allow_patterns=[glob.escape(name) for name in selection.files],
                    token=token or False,
                    endpoint=endpoint,
                    library_name=LIBRARY_NAME,
                    library_version=__version__,
                    max_workers=MAX_WORKERS,
                ), target)
            )
    except UserError:
        raise
    except Exception as err:
        if offline and isinstance(err, (LocalEntryNotFoundError, RevisionResolutionError, CachedRepoTreeNotFoundError)):
            raise UserError(
                f"{target}: HF_HUB_OFFLINE=1 is set but the Hugging Face cache at {cache} does not hold this "
                f"revision completely ({type(err).__name__}). Unset HF_HUB_OFFLINE to download it, or point "
                "HF_HUB_CACHE at a cache that has it."
            ) from None
        user = explain(err, target=target, doing="downloading", endpoint=public_endpoint(endpoint), web_url=web_url)
        if user is None:
            raise
        raise user from err

    source_record = {
        "kind": "hf",
        "uri": target,
        "repo_id": source.repo_id,
        "revision": source.revision,
        "commit": commit,
        "endpoint": public_endpoint(endpoint),
        "offline": offline,
    }
    with atomic_output_dir(out_dir) as tmp:
        with watch("materialize"):
            for name in selection.files:
                place_copy(snapshot / name, tmp / name)
        check_weight_index(tmp, selection, where=target)
        with watch("hash"):
            manifest = write_manifest(
                tmp,
                stage="download",
                params={"source": target},
                timings=watch.timings,
                extra={"source": source_record, "weights_format": selection.weights_format,
                       "skipped": list(selection.skipped)},
            )
        with watch("verify"):
            checks, failures = _verify(tmp, manifest, selection, listing, snapshot, offline=offline)
        if failures:
            for name in failures:
                _forget_cached(snapshot / name)
            raise UserError(
                f"{target} (commit {commit}): checksum mismatch: " + "; ".join(failures.values())
                + f". The bad copies were deleted from the Hugging Face cache at {cache}; run the download again."
            )
        manifest["checks"] = checks
        manifest["timings"] = {k: round(v, 3) for k, v in watch.timings.items()}
        write_json(tmp / MANIFEST_NAME, manifest)
    return manifest


def _retrying(call: Callable[[], T], what: str) -> T:
    """Run a Hub call again after a 5xx answer or a timeout, a bounded number of times.

    huggingface_hub retries some requests itself but not a file GET that answers 5xx; the whole snapshot
    is then asked for again, and the files already complete in the cache are not fetched twice.
    """
    for wait in (*RETRY_WAITS_S, None):
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - classified below, re-raised unless transient
            causes = list(exception_chain(err))
            http = next((e for e in causes if isinstance(e, HfHubHTTPError)), None)
            status = (getattr(getattr(http, "response", None), "status_code", 0) or 0) if http is not None else 0
            timeout = any(isinstance(e, httpx2.TimeoutException) for e in causes)
            if wait is None or not (status >= 500 or timeout):
                raise
            reason = f"answered HTTP {status}" if status else "timed out"
            log.warning("%s: the Hub %s; retrying in %g s", what, reason, wait)
        time.sleep(wait)
    raise AssertionError("unreachable")


def _remote_listing(api: HfApi, source: Source) -> tuple[str, dict[str, ListedFile]]:
    assert source.repo_id is not None
    info = _retrying(lambda: api.repo_info(source.repo_id, revision=source.revision), source.uri)
    commit = info.sha
    if not commit:
        raise UserError(f"{source.uri}: the Hub did not say which commit this revision is; is HF_ENDPOINT a Hub?")
    listing = {}
    for entry in api.list_repo_tree(source.repo_id, recursive=True, revision=commit):
        if isinstance(entry, RepoFile):
            lfs = entry.lfs
            listing[entry.path] = ListedFile(
                size=lfs.size if lfs is not None else entry.size,
                blob_id=entry.blob_id,
                lfs_sha256=lfs.sha256 if lfs is not None else None,
            )
    return commit, listing


def _cached_listing(api: HfApi, source: Source, cache: Path) -> tuple[str, dict[str, ListedFile]]:
    """The commit and file list a previous online download left in the cache (no network)."""
    assert source.repo_id is not None
    commit = api.resolve_revision(
        source.repo_id, revision=source.revision, cache_dir=cache, local_files_only=True
    ).resolved
    tree = get_cached_repo_tree(source.repo_id, revision=commit, cache_dir=cache)
    return commit, {entry.path: ListedFile(size=entry.size) for entry in tree}


def _storage_folder(cache: Path, repo_id: str) -> Path:
    # The cache layout huggingface_hub documents: models--{owner}--{name}/{refs,blobs,snapshots}.
    return cache / ("models--" + repo_id.replace("/", "--"))


def _remove_stale_partials(storage: Path, *, max_age_s: float = STALE_PARTIAL_S) -> None:
    """Delete partial downloads that a killed run left behind in the cache.

    huggingface_hub 2.4 writes each transfer to a file unique to its process (``<etag>.<id>.incomplete``)
    and deletes it on failure, but a process killed outright (SIGKILL, or SIGTERM from a workflow
    manager) leaves it, and no later run reuses or removes it: for a 7 GB checkpoint that is 7 GB of
    disk lost per interruption.  A transfer in progress writes every few milliseconds, so a partial
    file untouched for an hour belongs to no live download.
    """
    now = time.time()
    for partial in (storage / "blobs").glob("*.incomplete"):
        try:
            if now - partial.stat().st_mtime > max_age_s:
                partial.unlink()
                log.info("removed %s, a partial download left by an interrupted run", partial)
        except OSError:  # gone already, or a read-only cache
            pass


def _remember_ref(cache: Path, repo_id: str, revision: str, commit: str) -> None:
    """Record ``revision -> commit`` in the cache's ``refs/``, so that HF_HUB_OFFLINE=1 finds it later.

    The snapshot is fetched by commit (so that a branch moving mid-download cannot mix two commits),
    and huggingface_hub only records refs for the names it was given.
    """
    if revision == commit:
        return
    ref = _storage_folder(cache, repo_id) / "refs" / revision
    try:
        if ref.is_file() and ref.read_text() == commit:
            return
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
        tmp.write_text(commit)
        os.replace(tmp, ref)
    except OSError as err:  # a read-only shared cache must not stop a build
        log.warning("could not record %s -> %s in the cache: %s", revision, commit, err)


def _verify(
    directory: Path,
    manifest: dict[str, Any],
    selection: Selection,
    listing: dict[str, ListedFile],
    snapshot: Path,
    *,
    offline: bool,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Compare each file with the Hub's digest for it; return (checks for the manifest, failures by file).

    Online the reference is the Hub's own listing; offline it is the name the cache gave the blob, which
    is the digest the Hub sent when the file was fetched (sha256 for LFS files, git blob id otherwise).
    """
    checks: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    for name in selection.files:
        entry = manifest["files"][name]
        listed = listing.get(name)
        if listed is not None and listed.size is not None and listed.size != entry["size"]:
            failures[name] = f"{name} has {entry['size']} bytes, the Hub lists {listed.size}"
            continue
        if offline:
            expected_sha256, expected_git, against = _digest_from_cache_name(snapshot / name)
        elif listed is not None and listed.lfs_sha256:
            expected_sha256, expected_git, against = listed.lfs_sha256, None, "hub-lfs-sha256"
        elif listed is not None and listed.blob_id:
            expected_sha256, expected_git, against = None, listed.blob_id, "hub-git-blob-sha1"
        else:
            expected_sha256, expected_git, against = None, None, "none"
        if expected_sha256 is not None:
            actual = entry["sha256"]
            if actual != expected_sha256:
                failures[name] = f"{name}: expected sha256 {expected_sha256} ({against}), got {actual}"
            checks[name] = {"against": against, "expected": expected_sha256, "ok": actual == expected_sha256}
        elif expected_git is not None:
            actual = git_blob_sha1(directory / name)
            if actual != expected_git:
                failures[name] = f"{name}: expected git blob sha1 {expected_git} ({against}), got {actual}"
            checks[name] = {"against": against, "expected": expected_git, "ok": actual == expected_git}
        else:
            checks[name] = {"against": against, "expected": None, "ok": None}
    return checks, failures


def _digest_from_cache_name(pointer: Path) -> tuple[str | None, str | None, str]:
    # Only the first link counts: blobs/<etag> may itself link on into a cache-wide store named otherwise.
    if not pointer.is_symlink():
        return None, None, "none"
    etag = Path(os.readlink(pointer)).name
    if SHA256_HEX.fullmatch(etag):
        return etag, None, "cache-etag-sha256"
    if SHA1_HEX.fullmatch(etag):
        return None, etag, "cache-etag-git-blob-sha1"
    return None, None, "none"


def _forget_cached(pointer: Path) -> None:
    """Delete a snapshot entry and the blob it points to, so that the next run fetches the file again."""
    if pointer.is_symlink():
        blob = pointer.parent / os.readlink(pointer)
        blob.unlink(missing_ok=True)
    pointer.unlink(missing_ok=True)
