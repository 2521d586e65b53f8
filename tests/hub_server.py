"""A small stand-in for the Hugging Face Hub, served on 127.0.0.1, for tests that drive the real client.

It implements the part of the Hub's HTTP API that huggingface_hub 2.4 uses for the calls hf2mlc makes:

    GET  /api/models/{repo}[/revision/{rev}]            model info (commit sha, private, siblings)
    GET  /api/models/{repo}/tree/{rev}[/{path}]         file listing with git blob ids and LFS sha256
    GET  /api/models/{repo}/refs                        branches and tags
    HEAD/GET /{repo}/resolve/{rev}/{path}               file metadata (X-Repo-Commit, ETag, X-Linked-Etag,
                                                        X-Linked-Size) and content, with Range requests
    POST /api/repos/create                              create a repo (409 when it exists)
    POST /api/validate-yaml                             the model card's front matter must parse
    POST /api/models/{repo}/preupload/{rev}             regular or LFS upload mode per file
    POST /{repo}.git/info/lfs/objects/batch             LFS batch API (basic transfer)
    PUT  /lfs-objects/{sha256}                          the LFS object store (checks the sha256)
    POST /api/models/{repo}/commit/{rev}                NDJSON commit (file, lfsFile, deletedFile)
    POST /api/models/{repo}/tag/{rev}                   create a tag (409 when it exists)
    POST /api/models/{repo}/branch/{branch}             create a branch

Xet storage is never advertised, so the client falls back to plain HTTP and LFS (tests must also set
huggingface_hub's HF_HUB_DISABLE_XET, because uploads choose Xet whenever hf_xet is installed).

Faults are injected per test: an HTTP status for the next N matching requests, a connection dropped
after N bytes of a file, or wrong bytes served for a file whose listing keeps the right digests.
Everything is bounded: connection threads time out, and the server stops itself after ``max_lifetime_s``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

#: A recognizable token: tests look for it in every file, log and captured output.
FAKE_TOKEN = "hf_FAKE-token-for-hf2mlc-tests-DoNotLeak-0123"
#: Suffixes the Hub's default .gitattributes stores with LFS.
LFS_SUFFIXES = (".bin", ".safetensors", ".model", ".h5", ".onnx", ".msgpack", ".pt", ".pth", ".tar", ".so",
                ".dylib", ".wasm", ".gguf", ".zip")
LFS_MIN_SIZE = 10 * 1024 * 1024
DEFAULT_GITATTRIBUTES = b"".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n".encode() for s in LFS_SUFFIXES)


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def is_lfs(path: str, content: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or len(content) >= LFS_MIN_SIZE or b"\0" in content[:8000]


def lfs_pointer(content: bytes) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256(content)}\nsize {len(content)}\n".encode()


@dataclasses.dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, bytes]


@dataclasses.dataclass
class Repo:
    repo_id: str
    private: bool = False
    gated: bool = False
    granted: set[str] = dataclasses.field(default_factory=set)  # users who accepted a gated repo's terms
    commits: dict[str, Commit] = dataclasses.field(default_factory=dict)
    branches: dict[str, str] = dataclasses.field(default_factory=dict)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Fault:
    method: str
    path_pattern: str  # a regular expression searched in the unquoted request path
    times: int
    status: int | None = None  # answer with this status…
    drop_after: int | None = None  # …or send this many bytes of the file, then drop the connection


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names; the Authorization value is not kept
    user: str | None  # whom the Authorization header identified (None: anonymous or invalid)
    status: int


class FakeHub:
    """The Hub's state (repos, LFS objects, tokens) and the HTTP server that serves it."""

    def __init__(self, *, max_lifetime_s: float = 300.0) -> None:
        self.lock = threading.RLock()
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.wrong_bytes: dict[tuple[str, str], bytes] = {}  # (repo_id, path) -> bytes served instead
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        #: token -> (user, namespaces the token may write to); FAKE_TOKEN belongs to "tester".
        self.tokens: dict[str, tuple[str, set[str]]] = {FAKE_TOKEN: ("tester", {"tester", "test-org"})}
        self._commit_counter = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.server.hub = self  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-hub", daemon=True)
        self._watchdog = threading.Timer(max_lifetime_s, self.stop)
        self._watchdog.daemon = True
        self._stopped = False

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        self._thread.start()
        self._watchdog.start()
        return self

    def stop(self) -> None:
        with self.lock:
            if self._stopped:
                return
            self._stopped = True
        self._watchdog.cancel()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (e.g. snakemake) that must use this server and nothing else."""
        return {"HF_ENDPOINT": self.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}

    # --- state set-up by tests -----------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, bytes] | None = None, *, private: bool = False,
                 gated: bool = False, message: str = "initial commit") -> str:
        """Create a repo whose main branch has ``files`` (plus a .gitattributes); return the commit sha."""
        with self.lock:
            repo = Repo(repo_id=repo_id, private=private, gated=gated)
            self.repos[repo_id] = repo
            content = {".gitattributes": DEFAULT_GITATTRIBUTES, **(files or {})}
            return self._commit(repo, "main", content, message)

    def commit(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main",
               message: str = "update", delete: tuple[str, ...] = ()) -> str:
        """Add or replace ``files`` on ``branch``; return the new commit sha."""
        with self.lock:
            repo = self.repos[repo_id]
            content = dict(repo.commits[repo.branches[branch]].files)
            for path in delete:
                content.pop(path, None)
            content.update(files)
            return self._commit(repo, branch, content, message)

    def tag(self, repo_id: str, tag: str, revision: str = "main") -> str:
        with self.lock:
            repo = self.repos[repo_id]
            oid = self._resolve(repo, revision)
            assert oid is not None, revision
            repo.tags[tag] = oid
            return oid

    def files_at(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self.lock:
            repo = self.repos[repo_id]
            oid = self._resolve(repo, revision)
            assert oid is not None, revision
            return dict(repo.commits[oid].files)

    def serve_wrong_bytes(self, repo_id: str, path: str) -> None:
        """Serve ``path`` with one byte changed while the listing and headers keep the true digests."""
        with self.lock:
            content = self.files_at(repo_id)[path]
            middle = len(content) // 2
            flipped = bytes([content[middle] ^ 0xFF])
            self.wrong_bytes[(repo_id, path)] = content[:middle] + flipped + content[middle + 1:]

    def fail(self, method: str, path_pattern: str, *, status: int = 500, times: int = 1) -> None:
        """Answer the next ``times`` requests matching ``method`` and ``path_pattern`` with ``status``."""
        with self.lock:
            self.faults.append(Fault(method, path_pattern, times, status=status))

    def drop_connection(self, path_pattern: str, *, after_bytes: int, times: int = 1) -> None:
        """Send only ``after_bytes`` of the next matching file download(s), then close the connection."""
        with self.lock:
            self.faults.append(Fault("GET", path_pattern, times, drop_after=after_bytes))

    def requests_matching(self, method: str, path_pattern: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method == method and re.search(path_pattern, r.path)]

    # --- internals -----------------------------------------------------------------------------------

    def _commit(self, repo: Repo, branch: str, files: dict[str, bytes], message: str) -> str:
        parent = repo.branches.get(branch)
        self._commit_counter += 1
        digest = hashlib.sha1(f"{repo.repo_id}\0{parent}\0{message}\0{self._commit_counter}".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{git_blob_sha1(files[path])}\n".encode())
        oid = digest.hexdigest()
        repo.commits[oid] = Commit(oid=oid, parent=parent, message=message, files=dict(files))
        repo.branches[branch] = oid
        for path, content in files.items():
            if is_lfs(path, content):
                self.lfs_objects[sha256(content)] = content
        return oid

    @staticmethod
    def _resolve(repo: Repo, revision: str) -> str | None:
        if revision in repo.commits:
            return revision
        return repo.branches.get(revision) or repo.tags.get(revision)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and fault.method == method and re.search(fault.path_pattern, path):
                    fault.times -= 1
                    return fault
        return None


class HubError(Exception):
    """An error answer in the Hub's style: status, X-Error-Code and X-Error-Message headers."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


_API_REPO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?P<rest>/.*)?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_LFS_BATCH = re.compile(r"^/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$")
_LFS_OBJECT = re.compile(r"^/lfs-objects/(?P<oid>[0-9a-f]{64})$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # an idle keep-alive connection ends its thread after this many seconds
    server_version = "FakeHub/1.0"

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # requests are recorded in hub.requests instead of printed

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # --- plumbing ------------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        raw_path, query = split.path, parse_qs(split.query)
        path = unquote(raw_path)
        self._bad_token = False
        self._user = self._authenticate()
        body = self._read_body()
        self._request = (method, path, query)
        try:
            fault = self.hub._take_fault(method, path)
            if fault is not None and fault.status is not None:
                raise HubError(fault.status, f"injected fault {fault.status}")
            self._route(method, raw_path, query, body, drop_after=fault.drop_after if fault else None)
        except HubError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def send_response(self, code: int, message: str | None = None) -> None:
        # Recorded before the answer leaves, so a test that has its answer always finds the record.
        method, path, query = getattr(self, "_request", (self.command or "?", self.path, {}))
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"}
        with self.hub.lock:
            self.hub.requests.append(Request(method, path, query, headers, getattr(self, "_user", None), code))
        super().send_response(code, message)

    def _authenticate(self) -> str | None:
        value = self.headers.get("Authorization", "")
        if not value:
            return None
        token = value.removeprefix("Bearer ").strip()
        known = self.hub.tokens.get(token)
        if known is None:
            self._bad_token = True
            return None
        return known[0]

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _send_error(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send_json({"error": err.message, **err.extra}, err.status, headers)

    # --- access control -----------------------------------------------------------------------------

    def _repo_for_read(self, repo_id: str) -> Repo:
        if self._bad_token:
            raise HubError(401, "Invalid credentials in Authorization header")
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and self._user is None):
            # like the Hub: a private repo is indistinguishable from a missing one without a token
            raise HubError(404 if self._user else 401, "Repository not found", "RepoNotFound")
        if repo.private and repo_id.split("/")[0] not in self.hub.tokens[self._token()][1]:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if repo.gated and self._user not in repo.granted:
            if self._user is None:
                raise HubError(401, "Access to this model is restricted; you must be authenticated", "GatedRepo")
            raise HubError(403, f"Access to model {repo_id} is restricted and you are not in the authorized list",
                           "GatedRepo")
        return repo

    def _token(self) -> str:
        return self.headers.get("Authorization", "").removeprefix("Bearer ").strip()

    def _require_write(self, namespace: str) -> None:
        if self._bad_token or self._user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        if namespace not in self.hub.tokens[self._token()][1]:
            raise HubError(403, f"You don't have the rights to write to {namespace}")

    def _revision(self, repo: Repo, revision: str) -> str:
        oid = self.hub._resolve(repo, revision)
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return oid

    # --- routes --------------------------------------------------------------------------------------

    def _route(self, method: str, raw_path: str, query: dict[str, list[str]], body: bytes,
               *, drop_after: int | None) -> None:
        with self.hub.lock:
            if match := _RESOLVE.match(raw_path):
                if method in ("GET", "HEAD"):
                    return self._resolve_file(method, unquote(match["repo"]), unquote(match["rev"]),
                                              unquote(match["path"]), drop_after)
            elif match := _API_REPO.match(raw_path):
                return self._api_repo(method, unquote(match["repo"]), match["rest"] or "", body)
            elif raw_path == "/api/repos/create" and method == "POST":
                return self._create_repo(json.loads(body))
            elif raw_path == "/api/validate-yaml" and method == "POST":
                return self._validate_yaml(json.loads(body))
            elif (match := _LFS_BATCH.match(raw_path)) and method == "POST":
                return self._lfs_batch(unquote(match["repo"]), json.loads(body))
            elif (match := _LFS_OBJECT.match(raw_path)) and method == "PUT":
                return self._lfs_put(match["oid"], body)
        raise HubError(404, f"the fake Hub does not implement {method} {raw_path}")

    def _api_repo(self, method: str, repo_id: str, rest: str, body: bytes) -> None:
        parts = [unquote(p) for p in rest.split("/")[1:]] if rest else []
        if method == "GET" and (not parts or parts[0] == "revision"):
            repo = self._repo_for_read(repo_id)
            oid = self._revision(repo, parts[1] if len(parts) > 1 else "main")
            return self._send_json(self._model_info(repo, oid))
        if method == "GET" and parts and parts[0] == "tree":
            repo = self._repo_for_read(repo_id)
            oid = self._revision(repo, parts[1])
            prefix = "/".join(parts[2:])
            recursive = self._query_flag("recursive")
            return self._send_json(self._tree(repo.commits[oid].files, prefix, recursive))
        if method == "GET" and parts == ["refs"]:
            repo = self._repo_for_read(repo_id)
            return self._send_json(self._refs(repo))
        if method == "POST" and parts and parts[0] in ("preupload", "commit", "tag", "branch"):
            self._require_write(repo_id.split("/")[0])
            repo = self.hub.repos.get(repo_id)
            if repo is None:
                raise HubError(404, "Repository not found", "RepoNotFound")
            payload = body if parts[0] == "commit" else json.loads(body or b"{}")
            handler = {"preupload": self._preupload, "commit": self._apply_commit, "tag": self._create_tag,
                       "branch": self._create_branch}[parts[0]]
            return handler(repo, parts[1], payload)
        raise HubError(404, f"the fake Hub does not implement {method} /api/models/{repo_id}{rest}")

    def _query_flag(self, name: str) -> bool:
        values = parse_qs(urlsplit(self.path).query).get(name, ["false"])
        return values[0].lower() in ("1", "true")

    def _model_info(self, repo: Repo, oid: str) -> dict[str, Any]:
        files = repo.commits[oid].files
        return {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": oid,
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "tags": [],
            "siblings": [{"rfilename": path} for path in sorted(files)],
            "lastModified": "2026-01-01T00:00:00.000Z",
            "createdAt": "2026-01-01T00:00:00.000Z",
        }

    @staticmethod
    def _tree(files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict[str, Any]]:
        base = f"{prefix}/" if prefix else ""
        entries: dict[str, dict[str, Any]] = {}
        for path in sorted(files):
            if not path.startswith(base):
                continue
            rest = path[len(base):]
            parts = rest.split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                folder = base + "/".join(parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(),
                                                "size": 0, "path": folder})
            if not recursive and len(parts) > 1:
                continue
            content = files[path]
            entry: dict[str, Any] = {"type": "file", "path": path, "size": len(content)}
            if is_lfs(path, content):
                pointer = lfs_pointer(content)
                entry["oid"] = git_blob_sha1(pointer)
                entry["lfs"] = {"oid": sha256(content), "size": len(content), "pointerSize": len(pointer)}
            else:
                entry["oid"] = git_blob_sha1(content)
            entries[path] = entry
        return [entries[key] for key in sorted(entries)]

    @staticmethod
    def _refs(repo: Repo) -> dict[str, Any]:
        def ref(kind: str, name: str, oid: str) -> dict[str, str]:
            return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": oid}

        return {
            "branches": [ref("heads", n, o) for n, o in sorted(repo.branches.items())],
            "tags": [ref("tags", n, o) for n, o in sorted(repo.tags.items())],
            "converts": [],
        }

    def _resolve_file(self, method: str, repo_id: str, revision: str, path: str, drop_after: int | None) -> None:
        repo = self._repo_for_read(repo_id)
        oid = self._revision(repo, revision)
        files = repo.commits[oid].files
        if path not in files:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        content = files[path]
        served = self.hub.wrong_bytes.get((repo_id, path), content)
        headers = {"X-Repo-Commit": oid, "Accept-Ranges": "bytes"}
        if is_lfs(path, content):
            headers["ETag"] = f'"{git_blob_sha1(lfs_pointer(content))}"'
            headers["X-Linked-Etag"] = f'"{sha256(content)}"'
            headers["X-Linked-Size"] = str(len(content))
        else:
            headers["ETag"] = f'"{git_blob_sha1(content)}"'
        status, start, end = 200, 0, len(served)
        if method == "GET" and (match := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))):
            start = int(match[1])
            end = int(match[2]) + 1 if match[2] else len(served)
            if start >= len(served):
                raise HubError(416, "Requested range not satisfiable")
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(served)}"
        body = served[start:end]
        if drop_after is None or method == "HEAD":
            return self._send(status, body, headers, content_type="application/octet-stream")
        # Announce the whole body, send part of it, and cut the connection: a network failure mid-file.
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body[:drop_after])
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def _create_repo(self, payload: dict[str, Any]) -> None:
        if payload.get("type", "model") not in (None, "model"):
            raise HubError(400, "the fake Hub only holds model repos")
        user = self._user
        namespace = payload.get("organization") or user or ""
        self._require_write(namespace)
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self.hub.url}/{repo_id}"
        if repo_id in self.hub.repos:
            raise HubError(409, "You already created this model repo", url=url)  # the Hub sends the url too
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.hub.add_repo(repo_id, private=private)
        self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict[str, Any]) -> None:
        content = payload.get("content", "")
        errors = []
        if content.startswith("---"):
            end = content.find("\n---", 3)
            if end < 0:
                errors.append({"message": "front matter has no closing ---"})
            else:
                try:
                    meta = yaml.safe_load(content[3:end])
                    if meta is not None and not isinstance(meta, dict):
                        errors.append({"message": "front matter must be a mapping"})
                except yaml.YAMLError as err:
                    errors.append({"message": f"invalid YAML: {err}"})
        status = 400 if errors else 200
        self._send_json({"errors": errors, "warnings": []}, status)

    def _preupload(self, repo: Repo, revision: str, payload: dict[str, Any]) -> None:
        oid = self._revision(repo, revision)
        existing = repo.commits[oid].files
        answer = []
        for item in payload["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = item["path"].endswith(LFS_SUFFIXES) or item["size"] >= LFS_MIN_SIZE or b"\0" in sample
            entry: dict[str, Any] = {"path": item["path"], "uploadMode": "lfs" if lfs else "regular",
                                     "shouldIgnore": False}
            if item["path"] in existing:
                content = existing[item["path"]]
                entry["oid"] = sha256(content) if is_lfs(item["path"], content) else git_blob_sha1(content)
            answer.append(entry)
        self._send_json({"files": answer, "commitOid": oid})

    def _lfs_batch(self, repo_id: str, payload: dict[str, Any]) -> None:
        self._require_write(repo_id.split("/")[0])
        if repo_id not in self.hub.repos:
            raise HubError(404, "Repository not found", "RepoNotFound")
        objects = []
        for obj in payload["objects"]:
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.hub.lfs_objects:
                entry["authenticated"] = True
                entry["actions"] = {"upload": {"href": f"{self.hub.url}/lfs-objects/{obj['oid']}"}}
            objects.append(entry)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def _lfs_put(self, oid: str, body: bytes) -> None:
        if sha256(body) != oid:
            raise HubError(400, f"sha256 of the uploaded object is {sha256(body)}, not {oid}")
        self.hub.lfs_objects[oid] = body
        self._send(200)

    def _apply_commit(self, repo: Repo, revision: str, body: bytes) -> None:
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        header: dict[str, Any] = {}
        files = dict(repo.commits[repo.branches[revision]].files)
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                content = self.hub.lfs_objects.get(value["oid"])
                if content is None:
                    raise HubError(400, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = content
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {p: c for p, c in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            else:
                raise HubError(400, f"unknown commit operation {key}")
        parent = header.get("parentCommit")
        if parent and parent != repo.branches[revision]:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        oid = self.hub._commit(repo, revision, files, header.get("summary", ""))
        self._send_json({"success": True, "commitOid": oid, "commitUrl": f"{self.hub.url}/{repo.repo_id}/commit/{oid}",
                         "hookOutput": "", "pullRequestUrl": None})

    def _create_tag(self, repo: Repo, revision: str, payload: dict[str, Any]) -> None:
        oid = self._revision(repo, revision)
        tag = payload["tag"]
        if tag in repo.tags:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = oid
        self._send_json({})

    def _create_branch(self, repo: Repo, branch: str, payload: dict[str, Any]) -> None:
        if branch in repo.branches:
            raise HubError(409, f"Reference refs/heads/{branch} already exists")
        repo.branches[branch] = self._revision(repo, payload.get("startingPoint") or "main")
        self._send_json({})


if __name__ == "__main__":  # run by hand: python tests/hub_server.py, then point HF_ENDPOINT at it
    with FakeHub(max_lifetime_s=3600) as hub:
        print(f"fake Hub at {hub.url} (token {FAKE_TOKEN}); stops in an hour or on Ctrl-C", flush=True)
        try:
            while not hub._stopped:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
