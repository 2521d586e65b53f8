"""Versioned artifacts: manifests, content digests and all-or-nothing output directories.

Every stage writes its outputs into a temporary sibling directory and renames it into place only when
the stage succeeded, so an interrupted run never leaves a directory that looks complete.  Each output
directory carries ``manifest.json``: the sha256 and size of each file, the digests of the inputs, the
parameters, package versions and timings.  The *version id* of a directory is a digest over its files'
digests only (not timings or versions), so identical inputs give an identical id.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import UserError
from .layout import MANIFEST

MANIFEST_NAME = MANIFEST
_CHUNK = 1 << 20
#: Files up to this size are always re-hashed when a stage checks its inputs; larger ones (weights) only
#: when the stage reads them whole anyway, else their size is checked.
ALWAYS_HASH_BYTES = 16 << 20
_LOCK_SUFFIX = ".lock"

#: Packages whose versions change what the workflow produces.
TRACKED_PACKAGES = (
    "hf2mlc",
    "apache-tvm",
    "apache-tvm-ffi",
    "numpy",
    "torch",
    "transformers",
    "tokenizers",
    "sentencepiece",
    "safetensors",
    "huggingface_hub",
    "snakemake",
)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks so that large weights never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(directory: Path, *, exclude: tuple[str, ...] = (MANIFEST_NAME,)) -> dict[str, dict[str, Any]]:
    """Map each file below ``directory`` (POSIX relative path, sorted) to its sha256 and size."""
    entries: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel in exclude:
            continue
        entries[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return entries


def digest_of_entries(entries: Mapping[str, Mapping[str, Any]]) -> str:
    """A digest of (path, sha256) pairs: the content identity of a set of files."""
    digest = hashlib.sha256()
    for rel in sorted(entries):
        digest.update(rel.encode("utf-8"))
        digest.update(b"\0")
        digest.update(str(entries[rel]["sha256"]).encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()


def input_digest(path: str | os.PathLike[str]) -> str:
    """Digest of an input: a file's sha256, or for a directory the digest of its files' digests.

    A directory with a manifest is summarised by the manifest's recorded file digests, which is what
    was verified when it was written, and avoids rehashing gigabytes of weights at every stage.
    """
    path = Path(path)
    if path.is_dir():
        manifest = path / MANIFEST_NAME
        if manifest.is_file():
            return digest_of_entries(json.loads(manifest.read_text(encoding="utf-8"))["files"])
        return digest_of_entries(file_entries(path, exclude=()))
    if path.name == MANIFEST_NAME:
        return digest_of_entries(json.loads(path.read_text(encoding="utf-8"))["files"])
    return sha256_file(path)


def version_id(entries: Mapping[str, Mapping[str, Any]], length: int = 12) -> str:
    """Short content id of a set of files, as used in bundle names and Hub tags."""
    return digest_of_entries(entries)[:length]


def tool_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape the outputs (None where not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_json(path: Path, obj: Any) -> None:
    """Write JSON deterministically (sorted keys, 2-space indent, trailing newline) via a temp file."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_manifest(
    directory: Path,
    *,
    stage: str,
    inputs: Mapping[str, str | os.PathLike[str]] | None = None,
    params: Mapping[str, Any] | None = None,
    timings: Mapping[str, float] | None = None,
    resources: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Hash everything in ``directory`` and write its ``manifest.json``; return the manifest.

    ``inputs`` maps a role ("model", "tokenizer", …) to a file or directory; each is recorded by digest.
    ``timings`` (seconds) and ``resources`` (e.g. peak memory) are measurements: they vary from run to
    run, everything else in a manifest is the same for the same inputs.
    """
    directory = Path(directory)
    files = file_entries(directory)
    manifest: dict[str, Any] = {
        "stage": stage,
        "version_id": version_id(files),
        "files": files,
        "inputs": {role: input_digest(path) for role, path in sorted((inputs or {}).items())},
        "params": dict(params or {}),
        "tools": tool_versions(),
        "timings": {k: round(float(v), 3) for k, v in (timings or {}).items()},
        "resources": {k: round(float(v), 3) for k, v in (resources or {}).items()},
    }
    if extra:
        manifest.update(extra)
    write_json(directory / MANIFEST_NAME, manifest)
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    return json.loads((Path(directory) / MANIFEST_NAME).read_text(encoding="utf-8"))


def verify_manifest(directory: Path) -> list[str]:
    """Return the relative paths whose size or sha256 differ from the manifest (empty when intact)."""
    manifest = read_manifest(directory)
    bad = []
    for rel, entry in manifest["files"].items():
        path = Path(directory) / rel
        if not path.is_file() or path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            bad.append(rel)
    return bad


def verify_inputs(directory: str | os.PathLike[str], *, whole: bool = True) -> dict[str, Any]:
    """Check a stage output against its own manifest before a later stage uses it; return the manifest.

    Every file's size is checked; its sha256 too when ``whole`` (the reading stage reads every file
    anyway, so the page cache makes the hash nearly free) or when the file is small.  A file changed
    after its stage wrote it (an edit, a flipped byte, a truncation) fails here with one line naming the
    file, both digests and the rule to rerun, instead of flowing on into artifacts that claim otherwise.
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files: Mapping[str, Mapping[str, Any]] = manifest["files"]
        rule = str(manifest["stage"])
    except FileNotFoundError:
        raise UserError(
            f"{manifest_path}: missing, so {directory} cannot be checked before use; "
            f"rerun the stage that makes it (snakemake --forcerun of the rule whose output is {directory})."
        ) from None
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{manifest_path}: not a valid manifest ({err}); rerun the stage that makes {directory}.") from None
    fix = f"rerun with `snakemake --forcerun {rule}` (or restore the file)"
    for rel, entry in sorted(files.items()):
        path = directory / rel
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise UserError(f"{path}: missing, but {manifest_path} (rule {rule}) lists it; {fix}.") from None
        if size != entry["size"]:
            raise UserError(
                f"{path}: {size} bytes, but {manifest_path} (rule {rule}) records {entry['size']} bytes "
                f"(sha256 {entry['sha256']}): the file changed after rule {rule} wrote it; {fix}."
            )
        if whole or size <= ALWAYS_HASH_BYTES:
            actual = sha256_file(path)
            if actual != entry["sha256"]:
                raise UserError(
                    f"{path}: sha256 {actual}, but {manifest_path} (rule {rule}) records {entry['sha256']}: "
                    f"the file changed after rule {rule} wrote it; {fix}."
                )
    return manifest


def remove_stale_temporaries(final: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary directories of ``final`` that no live process owns; return what was removed.

    A run killed outright (``kill -9``, the OOM killer, a lost node) cannot clean up, and its temporary
    directory can hold gigabytes of half-written weights.  Each temporary directory has a lock file
    that its process holds an ``flock`` on; the kernel releases that lock when the process dies, however
    it dies, so a lock that can be taken (or a directory without one, from an older hf2mlc) is stale.
    """
    final = Path(final)
    removed = []
    for candidate in sorted(final.parent.glob(f".{glob.escape(final.name)}.tmp-*")):
        if candidate.name.endswith(_LOCK_SUFFIX):
            if not candidate.with_name(candidate.name[: -len(_LOCK_SUFFIX)]).exists() and _is_unowned(candidate):
                candidate.unlink(missing_ok=True)
            continue
        lock = candidate.with_name(candidate.name + _LOCK_SUFFIX)
        if lock.exists() and not _is_unowned(lock):
            continue
        shutil.rmtree(candidate, ignore_errors=True)
        lock.unlink(missing_ok=True)
        removed.append(candidate)
    return removed


def _is_unowned(lock: Path) -> bool:
    try:
        with open(lock, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(handle, fcntl.LOCK_UN)
            return True
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def scratch_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary sibling directory of ``final``, locked while this process lives and removed
    when the block ends, however it ends; what a killed run left behind is removed by the next run
    (:func:`remove_stale_temporaries`). For a stage's working files that are never its output (the
    upload's Hub folder); :func:`atomic_output_dir` builds on it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    # The lock file comes first, so that no other run ever sees this directory without its lock.
    fd, lock_name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", suffix=_LOCK_SUFFIX, dir=final.parent)
    lock = Path(lock_name)
    tmp = lock.with_name(lock.name[: -len(_LOCK_SUFFIX)])
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        tmp.mkdir()  # an ordinary directory (mode from the umask), unlike mkdtemp's 0700
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already where the block renamed it into place
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


@contextlib.contextmanager
def atomic_output_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``final`` only if the block succeeds.

    The temporary directory is a sibling of ``final`` (same file system, so the rename is atomic) and is
    removed on any failure, so a crash or Ctrl-C never leaves a half-written ``final``; what a killed
    run left behind is removed by the next run (:func:`remove_stale_temporaries`).
    """
    final = Path(final)
    with scratch_dir(final) as tmp:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)


class Stopwatch:
    """Collects named wall-clock timings for a manifest: ``with watch("convert"): …``."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
