"""Publish a packaged bundle to a Hub repository, once per version, with a tag that names the version.

The bundle's version id is a digest of its files, so "this version is already published" is a fact
that can be checked: if the repository has a tag with that name and the tagged commit holds the same
files (same sha256 for LFS files, same git blob id for the others), nothing is sent.  A tag that
exists with other content is an error, never overwritten.

Nothing leaves the machine unless the upload is enabled: the default is a dry run that prints the
plan.  A repository meant to be private is never filled while it is public.

A tagged commit holds exactly its version's files: what changed is added and what the version lacks is
deleted in the same commit, and after tagging the Hub's listing is checked against the bundle.  A publish
cut short (a commit whose tag failed, a repo created without a commit) is completed by the next run, and
the record says truthfully whether anything was sent.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, RepoFile
from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id

from .. import __version__
from ..errors import UserError
from ..manifest import MANIFEST_NAME, read_manifest, sha256_file
from .connection import hub_endpoint, is_offline, make_api, public_endpoint, redacted_logs, resolve_token
from .digests import git_blob_sha1
from .failures import explain

#: Files that describe a build rather than being part of it (timings, tool versions): two builds of the
#: same version differ in them, so they do not count when deciding whether a version is already published.
VOLATILE_FILES = (MANIFEST_NAME, "hf2mlc-manifest.json")
#: Files the Hub itself puts in a new repo; they are not part of a bundle and are never deleted.
KEPT_REMOTE_FILES = (".gitattributes",)
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclasses.dataclass(frozen=True)
class PlannedFile:
    path: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@redacted_logs()
def upload(
    package_dir: Path,
    *,
    repo_id: str,
    private: bool,
    enabled: bool,
    token: str | None = None,
    revision: str = "main",
    commit_message: str | None = None,
    version_id: str | None = None,
) -> dict[str, Any]:
    """Upload the folder ``package_dir`` to ``repo_id`` and tag the commit with the bundle's version id.

    The version id is ``version_id`` when given (the caller vouches for the folder, e.g. a Hub layout made
    from a package), else ``package_dir/manifest.json["version_id"]``, and then every file must match that
    manifest.  Returns a record of what was (or, in a dry run, would be) sent; it never contains the token.
    """
    package_dir = Path(package_dir)
    _check_repo_id(repo_id)
    if not package_dir.is_dir():
        raise UserError(f"{package_dir}: no such directory; run the package stage to make the bundle first")
    files = _folder_files(package_dir)
    if version_id is None:
        version_id = _version_from_manifest(package_dir, files)
    _check_tag_name(version_id)
    endpoint = hub_endpoint()
    public = public_endpoint(endpoint)
    record: dict[str, Any] = {
        "repo_id": repo_id,
        "private": private,
        "revision": revision,
        "tag": version_id,
        "endpoint": public,
        "url": f"{public}/{repo_id}/tree/{version_id}",
        "files": [f.as_dict() for f in files],
        "total_bytes": sum(f.size for f in files),
    }
    if not enabled:
        record.update(dry_run=True, uploaded=False, commit=None, sent=[],
                      message="dry run: nothing was sent; set upload.enabled: true to publish")
        print(_describe_plan(record), flush=True)
        return record
    if is_offline():
        raise UserError("upload.enabled is true but HF_HUB_OFFLINE=1 is set; unset it to publish the bundle")
    token = token or resolve_token()
    if not token:
        raise UserError(
            "upload.enabled is true but there is no Hugging Face token: set HF_TOKEN or run `hf auth login` "
            f"with a token that can write to {repo_id.split('/')[0]}"
        )
    api = make_api(endpoint, token)
    target = f"hf://{repo_id}"
    try:
        return _publish(api, package_dir, record, files, private=private, revision=revision,
                        commit_message=commit_message)
    except UserError:
        raise
    except Exception as err:
        user = explain(err, target=target, doing="uploading", endpoint=public, web_url=f"{public}/{repo_id}")
        if user is None:
            raise
        raise user from err


def _publish(
    api: HfApi,
    package_dir: Path,
    record: dict[str, Any],
    files: list[PlannedFile],
    *,
    private: bool,
    revision: str,
    commit_message: str | None,
) -> dict[str, Any]:
    repo_id, version = record["repo_id"], record["tag"]
    tagged = _tag_commit(api, repo_id, version)
    if tagged is not None:
        differing = _differences(_remote_files(api, repo_id, tagged), package_dir, files)
        if differing:
            raise UserError(
                f"hf://{repo_id}: tag {version} already exists on commit {tagged} but holds other content "
                f"({', '.join(differing[:5])}{' …' if len(differing) > 5 else ''}). A version id must always "
                "mean the same files: delete that tag on the Hub if it is wrong, or rebuild the package."
            )
        message = (
            f"hf://{repo_id}: version {version} is already published (tag {version} = commit {tagged}); "
            "nothing uploaded"
        )
        print(message, flush=True)
        record.update(dry_run=False, uploaded=False, commit=tagged, sent=[], deleted=[], message=message)
        return record

    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.repo_info(repo_id)
    if private and not info.private:
        raise UserError(
            f"hf://{repo_id} exists and is public, but upload.private is true: nothing was uploaded. Make the repo "
            "private on the Hub (Settings) or set upload.private: false."
        )
    if revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    head = api.repo_info(repo_id, revision=revision).sha
    remote = _remote_files(api, repo_id, head) if head else {}
    changed = set(_differences(remote, package_dir, files, missing_suffix=""))
    if changed:  # the provenance manifest goes with any real change, so the commit describes itself
        changed |= set(_differences(remote, package_dir, files, missing_suffix="", volatile=True))
    adds = [f for f in files if f.path in changed]
    planned = {f.path for f in files}
    stale = sorted(p for p in remote if p not in planned and p not in KEPT_REMOTE_FILES)
    if adds or stale:
        # One commit adds what changed and deletes what this version lacks, so no commit on the branch
        # (and no tag) ever holds a mix of two versions; parent_commit makes a concurrent push fail.
        operations: list[CommitOperationAdd | CommitOperationDelete] = [
            CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=package_dir / f.path) for f in adds
        ]
        operations += [CommitOperationDelete(path_in_repo=path) for path in stale]
        commit = api.create_commit(
            repo_id,
            operations=operations,
            commit_message=commit_message or f"Upload bundle {version} (hf2mlc {__version__})",
            revision=revision,
            parent_commit=head,
        )
        oid = commit.oid
        message = (f"hf://{repo_id}: sent {len(adds)} of {len(files)} files"
                   f"{f', deleted {len(stale)} stale' if stale else ''} as commit {oid}, tagged {version}")
    else:
        # An earlier run committed exactly these files and stopped before tagging: tag what is there.
        oid = head
        message = (f"hf://{repo_id}: commit {oid} already holds version {version} (an earlier run stopped "
                   f"before tagging it); nothing uploaded, tagged {version}")
    api.create_tag(repo_id, tag=version, revision=oid, tag_message=f"hf2mlc bundle {version}")
    _verify_published(api, repo_id, version, package_dir)
    print(message, flush=True)
    record.update(dry_run=False, uploaded=bool(adds or stale), commit=oid, sent=[f.path for f in adds],
                  deleted=stale, verified=True, message=message)
    return record


def _verify_published(api: HfApi, repo_id: str, version: str, package_dir: Path) -> None:
    """Check with the Hub's own listing that the tagged commit holds exactly the folder's files.

    huggingface_hub's ``verify_repo_checksums`` compares every LFS sha256 and git blob id of the tagged
    commit with the local files.  Only the provenance manifest may differ (when an earlier identical
    build's commit was tagged), and only ``.gitattributes`` may be on the Hub and not in the bundle.
    """
    result = api.verify_repo_checksums(repo_id, revision=version, local_dir=package_dir)
    wrong = [m["path"] for m in result.mismatches if m["path"].rsplit("/", 1)[-1] not in VOLATILE_FILES]
    extra = [p for p in result.missing_paths if p not in KEPT_REMOTE_FILES]
    absent = list(result.extra_paths)
    if wrong or extra or absent:
        problems = [f"differ: {', '.join(wrong)}"] if wrong else []
        problems += [f"on the Hub but not in the bundle: {', '.join(extra)}"] if extra else []
        problems += [f"missing on the Hub: {', '.join(absent)}"] if absent else []
        raise UserError(
            f"hf://{repo_id}: after the upload, tag {version} does not hold exactly the bundle ({'; '.join(problems)}). "
            f"Delete tag {version} on the Hub and run the upload again."
        )


def _check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise UserError(
            f"upload.repo_id {repo_id!r} must be owner/name, e.g. your-name/japanese-large-lm-3.6b-q4f16_0-MLC"
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UserError(f"upload.repo_id {repo_id!r} is not a valid repo id: {err}") from None


def _check_tag_name(version_id: str) -> None:
    if not isinstance(version_id, str) or not _TAG.fullmatch(version_id):
        raise UserError(
            f"bundle version id {version_id!r} cannot be a git tag (letters, digits, '.', '_', '-' only); "
            "rebuild the package"
        )


def _folder_files(package_dir: Path) -> list[PlannedFile]:
    """Every file upload_folder would send (it skips .git and .cache/huggingface), with size and sha256."""
    files = []
    for path in sorted(p for p in package_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(package_dir).as_posix()
        parts = rel.split("/")
        if ".git" in parts or rel.startswith(".cache/huggingface/") or "/.cache/huggingface/" in rel:
            continue
        files.append(PlannedFile(rel, path.stat().st_size, sha256_file(path)))
    return files


def _version_from_manifest(package_dir: Path, files: list[PlannedFile]) -> str:
    """The manifest's version id, after checking that the folder holds exactly the files it describes.

    The tag will claim that the commit holds exactly the version those digests name, so a bundle edited
    by hand (or with a stray file) is refused rather than published under a version id that is not its own.
    """
    manifest_path = package_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise UserError(f"{package_dir}: no {MANIFEST_NAME}; run the package stage to make the bundle first")
    try:
        manifest = read_manifest(package_dir)
        version = str(manifest["version_id"])
        covered: dict[str, dict[str, Any]] = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{manifest_path} is not a valid manifest ({err}); rebuild the package") from None
    on_disk = {f.path: f for f in files if f.path != MANIFEST_NAME}
    changed = sorted(
        rel for rel, entry in covered.items()
        if rel not in on_disk or on_disk[rel].sha256 != entry.get("sha256") or on_disk[rel].size != entry.get("size")
    )
    extra = sorted(set(on_disk) - set(covered))
    if changed or extra:
        problems = [f"changed or missing: {', '.join(changed)}"] if changed else []
        problems += [f"not in the manifest: {', '.join(extra)}"] if extra else []
        raise UserError(
            f"{package_dir} does not match its {MANIFEST_NAME} ({'; '.join(problems)}); rerun the package stage "
            "instead of editing the bundle by hand"
        )
    return version


def _tag_commit(api: HfApi, repo_id: str, tag: str) -> str | None:
    try:
        refs = api.list_repo_refs(repo_id)
    except RepositoryNotFoundError as err:
        if getattr(err.response, "status_code", None) == 404:
            return None  # not created yet
        raise
    return next((ref.target_commit for ref in refs.tags if ref.name == tag), None)


def _remote_files(api: HfApi, repo_id: str, commit: str) -> dict[str, RepoFile]:
    return {f.path: f for f in api.list_repo_tree(repo_id, recursive=True, revision=commit) if isinstance(f, RepoFile)}


def _differences(
    remote: dict[str, RepoFile],
    package_dir: Path,
    files: list[PlannedFile],
    *,
    missing_suffix: str = " missing",
    volatile: bool = False,
) -> list[str]:
    """Files of the folder that the remote commit lacks or holds with other content.

    Provenance manifests count only when missing (unless ``volatile``): they also record timings and
    tool versions, which differ between two builds of the same version.  Remote files the folder lacks count too (a version
    must not be tagged on a commit that still holds another version's files).
    """
    differing = []
    planned = {f.path for f in files}
    for planned_file in files:
        found = remote.get(planned_file.path)
        if found is None:
            differing.append(f"{planned_file.path}{missing_suffix}")
        elif not volatile and planned_file.path.rsplit("/", 1)[-1] in VOLATILE_FILES:
            continue
        elif found.lfs is not None:
            if found.lfs.sha256 != planned_file.sha256:
                differing.append(planned_file.path)
        elif found.blob_id != git_blob_sha1(package_dir / planned_file.path):
            differing.append(planned_file.path)
    if missing_suffix:
        differing += [f"{p} not in the bundle" for p in sorted(remote) if p not in planned and p not in KEPT_REMOTE_FILES]
    return differing


def _describe_plan(record: dict[str, Any]) -> str:
    lines = [
        f"[dry run] would upload {len(record['files'])} files ({record['total_bytes'] / 1e6:.1f} MB) to "
        f"{'private' if record['private'] else 'public'} repo {record['endpoint']}/{record['repo_id']} "
        f"(branch {record['revision']}) and tag the commit {record['tag']}:",
    ]
    lines += [f"  {f['size']:>14,d}  {f['path']}" for f in record["files"]]
    lines.append("nothing was sent; set upload.enabled: true (and HF_TOKEN) to publish")
    return "\n".join(lines)
