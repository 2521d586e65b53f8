"""The version store: every package version ever produced, kept where no rerun can delete it.

Snakemake deletes a job's old output before the job runs, so ``results/package/<model>/<device>`` alone
cannot keep the last good bundle through a failing rerun.  Each finished package is therefore also
linked into ``results/versions/<model>/<device>/<version_id>/``, which no rule names as an output.
The links are hard links to the package's own files (which are themselves hard links to the weights),
so a stored version costs directory entries, not bytes.  ``results/versions.jsonl`` gets one line per
version produced, pointing at its directory; ``restore`` puts a stored version back as the current
bundle after checking every file against the version's manifest.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import layout
from .errors import UserError
from .manifest import MANIFEST_NAME, atomic_output_dir, read_manifest, verify_manifest


def store(
    package_dir: Path, *, versions_log: Path, model: str, device: str, settings: Mapping[str, Any]
) -> Path:
    """Link a finished package into the store beside ``versions_log`` and append its line; return its directory.

    A version already stored (same files, so the same id) is kept as it is: its files are the same bytes.
    """
    package_dir, results = Path(package_dir), Path(versions_log).parent
    manifest = read_manifest(package_dir)
    version = str(manifest["version_id"])
    target = Path(layout.version_dir(model, device, version, str(results)))
    if not (target / MANIFEST_NAME).is_file():
        with atomic_output_dir(target) as tmp:
            _link_tree(package_dir, tmp)
    entry = {
        "version_id": version,
        "model": model,
        "device": device,
        "model_id": settings.get("model_id"),
        "quantization": settings.get("quantization"),
        "source": settings.get("source"),
        "inputs": manifest.get("inputs", {}),
        "path": target.relative_to(results).as_posix(),
        "produced_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with open(versions_log, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n")
    return target


def list_versions(results: Path) -> list[dict[str, Any]]:
    """The stored versions, oldest first, one per version directory, with the latest line that names it.

    Lines of versions.jsonl written before the store existed (no ``path``) are listed as not stored.
    """
    results = Path(results)
    log_path = Path(layout.versions_log(str(results)))
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    if log_path.is_file():
        for number, line in enumerate(log_path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                raise UserError(f"{log_path}:{number}: not a JSON line; remove or fix that line.") from None
            key = (str(entry.get("path") or ""), str(entry["version_id"]))
            latest.pop(key, None)
            latest[key] = entry
    for manifest_path in sorted((results / layout.VERSIONS_DIR).glob(f"*/*/*/{MANIFEST_NAME}")):
        directory = manifest_path.parent
        rel = directory.relative_to(results).as_posix()
        key = (rel, directory.name)
        if key not in latest:  # stored, but its line was lost (a hand-edited log): still a version
            model, device = directory.parent.parent.name, directory.parent.name
            latest[key] = {"version_id": directory.name, "model": model, "device": device, "path": rel}
    rows = []
    for (rel, _), entry in latest.items():
        stored = bool(rel) and (results / rel / MANIFEST_NAME).is_file()
        rows.append({**entry, "stored": stored})
    return rows


def find_version(results: Path, version_id: str) -> dict[str, Any]:
    """The one stored version whose id starts with ``version_id``."""
    matches = [r for r in list_versions(results) if r["stored"] and str(r["version_id"]).startswith(version_id)]
    ids = sorted({(r["model"], r["device"], r["version_id"]) for r in matches})
    if not ids:
        raise UserError(
            f"{Path(results) / layout.VERSIONS_DIR}: no stored version {version_id!r}; `hf2mlc versions` lists them."
        )
    if len(ids) > 1:
        listed = ", ".join(f"{m}/{d}/{v}" for m, d, v in ids)
        raise UserError(f"version {version_id!r} is ambiguous ({listed}); give more of the id or --model/--device.")
    return next(r for r in matches if (r["model"], r["device"], r["version_id"]) == ids[0])


def restore(results: Path, version_id: str, *, package_dir: Path | None = None) -> tuple[dict[str, Any], Path]:
    """Put a stored version back as the current bundle (``results/package/<model>/<device>``).

    The version is checked against its manifest first, so a stored version damaged since (its files
    are shared with the weights and packages) is refused instead of restored.
    """
    results = Path(results)
    entry = find_version(results, version_id)
    source = results / entry["path"]
    bad = verify_manifest(source)
    if bad:
        raise UserError(
            f"{source}: stored version {entry['version_id']} no longer matches its manifest ({', '.join(bad)}); "
            "it cannot be restored. Rebuild it with snakemake, or restore another version."
        )
    target = Path(package_dir) if package_dir is not None else Path(layout.package_dir(entry["model"], entry["device"], str(results)))
    with atomic_output_dir(target) as tmp:
        _link_tree(source, tmp)
    return entry, target


def _link_tree(source: Path, dest: Path) -> None:
    for src in sorted(p for p in source.rglob("*") if p.is_file()):
        dst = dest / src.relative_to(source)
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:  # another file system, or links not allowed: a copy keeps the version just as safe
            shutil.copy2(src, dst)
