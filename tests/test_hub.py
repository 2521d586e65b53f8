"""hf2mlc.hub against the real huggingface_hub client and a local fake Hub (tests/hub_server.py).

Nothing here is mocked: huggingface_hub 2.4 makes real HTTP requests to a server on 127.0.0.1 that
speaks the Hub's API, with faults injected per test.  Expected digests are computed independently
with hashlib from the bytes the server holds; the client's own results are never the reference.
"""

from __future__ import annotations

import hashlib
import re
import json
import logging
import os
import random
import socket
import subprocess
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import constants
from huggingface_hub.utils._http import default_client_factory, set_client_factory

from hf2mlc.errors import UserError
from hf2mlc.hub import resolve_token, upload
from hf2mlc.sources import download, parse_source, select_build_files
from hf2mlc.sources import fetch as download_module
from hf2mlc.hub.digests import git_blob_sha1
from hf2mlc.manifest import read_manifest, verify_inputs, write_manifest
from hub_server import FAKE_TOKEN, FakeHub

REPO = "line-corp/tiny-neox"
MiB = 1 << 20


def rnd(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def model_files(*, safetensors_size: int = 40_000) -> dict[str, bytes]:
    """A GPT-NeoX repo as the Hub has them: both weight formats, a tokenizer, a card, and things to skip."""
    return {
        "config.json": json.dumps({"model_type": "gpt_neox", "hidden_size": 64, "vocab_size": 512}).encode(),
        "generation_config.json": b'{"bos_token_id": 2, "eos_token_id": 2}\n',
        "model.safetensors": rnd(safetensors_size, 1),
        "pytorch_model.bin": rnd(30_000, 2),
        "spiece.model": rnd(5_000, 3),
        "tokenizer_config.json": b'{"tokenizer_class": "T5Tokenizer"}\n',
        "special_tokens_map.json": b'{"pad_token": "</s>"}\n',
        "README.md": "---\nlicense: apache-2.0\nlanguage: ja\n---\n# 小さなモデル\n".encode(),
        "LICENSE": b"Apache License, Version 2.0\n",
        "tf_model.h5": rnd(1_000, 4),
        "onnx/model.onnx": rnd(1_000, 5),
    }


BUILD_FILES = sorted(
    ["config.json", "generation_config.json", "model.safetensors", "spiece.model", "tokenizer_config.json",
     "special_tokens_map.json", "README.md", "LICENSE"]
)


def _local_only_client():
    """huggingface_hub's own client, refusing any host but 127.0.0.1, so no test can reach the internet."""
    client = default_client_factory()

    def refuse_remote(request) -> None:
        if request.url.host != "127.0.0.1":
            raise RuntimeError(f"a test tried to reach {request.url}")

    client.event_hooks = {**client.event_hooks, "request": [refuse_remote, *client.event_hooks["request"]]}
    return client


@pytest.fixture
def hf_env(monkeypatch, tmp_path):
    """Isolate huggingface_hub: no telemetry, no Xet, online, no token from this machine."""
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(download_module, "RETRY_WAITS_S", (0.05, 0.05, 0.05))
    set_client_factory(_local_only_client)
    yield
    set_client_factory(default_client_factory)


@pytest.fixture
def hub(hf_env, monkeypatch):
    server = FakeHub(max_lifetime_s=120).start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    huggingface_hub.close_session()  # ends the keep-alive connections, so the server threads end now
    server.stop()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob_sha1_bytes(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def gets(hub: FakeHub, name: str) -> list:
    return hub.requests_matching("GET", rf"/resolve/[^/]+/{name}$")


# --- parse_source -----------------------------------------------------------------------------------------


def test_parse_source_forms(tmp_path):
    assert parse_source("hf://line-corporation/japanese-large-lm-3.6b-instruction-sft@v1.0").revision == "v1.0"
    src = parse_source("hf://owner/name")
    assert (src.kind, src.repo_id, src.revision, src.path) == ("hf", "owner/name", "main", None)
    assert src.uri == "hf://owner/name@main"
    assert parse_source("hf://owner/name@refs/pr/3").revision == "refs/pr/3"
    assert parse_source("demo").kind == "demo"
    (tmp_path / "models" / "mine").mkdir(parents=True)
    local = parse_source("models/mine", base_dir=tmp_path)
    assert (local.kind, local.path) == ("local", (tmp_path / "models" / "mine").resolve())


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("hf://owner", "owner/name"),
        ("hf://a/b/c", "owner/name"),
        ("hf://owner/na--me", "invalid repo id"),
        ("hf://owner/name@", "nothing after '@'"),
        ("hf://owner/name@bad rev", "not a valid git revision"),
        ("s3://bucket/model", "unknown scheme"),
        ("owner/name", "hf://owner/name"),
        ("", "empty"),
    ],
)
def test_parse_source_errors_say_what_to_write(text, words, tmp_path):
    with pytest.raises(UserError, match=None) as info:
        parse_source(text, base_dir=tmp_path)
    assert words in str(info.value)


# --- which files a build needs ----------------------------------------------------------------------------


def test_selection_prefers_safetensors_and_skips_other_formats():
    chosen = select_build_files(model_files(), where="x")
    assert list(chosen.files) == BUILD_FILES
    assert chosen.weights_format == "safetensors"
    assert set(chosen.skipped) == {"pytorch_model.bin", "tf_model.h5", "onnx/model.onnx"}


def test_selection_takes_sharded_pickles_when_there_is_no_safetensors():
    names = ["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
             "pytorch_model.bin.index.json", "spiece.model", "training_args.bin"]
    chosen = select_build_files(names, where="x")
    assert chosen.weights_format == "pytorch"
    assert list(chosen.files) == sorted(names[:5])


@pytest.mark.parametrize(("names", "words"), [(["model.safetensors"], "no config.json"),
                                              (["config.json", "tf_model.h5"], "no weights")])
def test_selection_errors(names, words):
    with pytest.raises(UserError) as info:
        select_build_files(names, where="hf://o/m@main")
    assert words in str(info.value) and "hf://o/m@main" in str(info.value)


def test_git_blob_sha1_matches_git(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b'{"a": 1}\n\x00binary')
    expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True)
    assert git_blob_sha1(path) == expected.stdout.strip()


# --- download ---------------------------------------------------------------------------------------------


def test_download_fetches_only_build_files_pinned_and_verified(hub, tmp_path):
    files = model_files()
    commit = hub.add_repo(REPO, files)
    out = tmp_path / "out"
    manifest = download(parse_source(f"hf://{REPO}"), out, cache_dir=tmp_path / "cache")

    assert sorted(p.name for p in out.iterdir()) == sorted(BUILD_FILES + ["manifest.json"])
    for name in BUILD_FILES:
        path = out / name
        assert not path.is_symlink() and path.read_bytes() == files[name]
        assert manifest["files"][name] == {"sha256": sha(files[name]), "size": len(files[name])}
    assert manifest["source"] == {"kind": "hf", "uri": f"hf://{REPO}@main", "repo_id": REPO, "revision": "main",
                                  "commit": commit, "endpoint": hub.url, "offline": False}
    assert manifest["weights_format"] == "safetensors"
    assert read_manifest(out) == manifest
    lfs = {"model.safetensors", "spiece.model"}
    for name in BUILD_FILES:
        check = manifest["checks"][name]
        assert check["ok"] is True
        if name in lfs:
            assert check == {"against": "hub-lfs-sha256", "expected": sha(files[name]), "ok": True}
        else:
            assert check["against"] == "hub-git-blob-sha1" and check["expected"] == git_blob_sha1(out / name)
    # what the build does not need never crossed the network
    for skipped in ("pytorch_model.bin", "tf_model.h5", "model.onnx"):
        assert gets(hub, skipped) == []
    # every file request was pinned to the commit, not to the moving branch name
    assert all(f"/resolve/{commit}/" in r.path for r in hub.requests_matching("GET", "/resolve/"))


def test_download_pinned_revision_gets_old_content_after_branch_moves(hub, tmp_path):
    files = model_files()
    first = hub.add_repo(REPO, files)
    hub.tag(REPO, "v1")
    hub.commit(REPO, {"config.json": b'{"model_type": "gpt_neox", "hidden_size": 128}'})
    cache = tmp_path / "cache"
    for revision in ("v1", first):
        manifest = download(parse_source(f"hf://{REPO}@{revision}"), tmp_path / revision, cache_dir=cache)
        assert manifest["source"]["commit"] == first and manifest["source"]["revision"] == revision
        assert (tmp_path / revision / "config.json").read_bytes() == files["config.json"]
    latest = download(parse_source(f"hf://{REPO}"), tmp_path / "main", cache_dir=cache)
    assert latest["source"]["commit"] != first
    assert json.loads((tmp_path / "main" / "config.json").read_text())["hidden_size"] == 128


def test_download_picks_pytorch_bin_when_repo_has_no_safetensors(hub, tmp_path):
    files = model_files()
    del files["model.safetensors"]
    hub.add_repo(REPO, files)
    manifest = download(parse_source(f"hf://{REPO}"), tmp_path / "out", cache_dir=tmp_path / "cache")
    assert manifest["weights_format"] == "pytorch"
    assert (tmp_path / "out" / "pytorch_model.bin").read_bytes() == files["pytorch_model.bin"]


def test_download_retries_server_errors(hub, tmp_path):
    files = model_files()
    hub.add_repo(REPO, files)
    hub.fail("GET", r"/revision/main$", status=500)  # repo_info: retried by hf2mlc
    hub.fail("GET", r"/tree/", status=503)  # listing: retried by huggingface_hub's backoff
    hub.fail("HEAD", r"/config\.json$", status=502)  # file metadata: retried by huggingface_hub
    manifest = download(parse_source(f"hf://{REPO}"), tmp_path / "out", cache_dir=tmp_path / "cache")
    assert [r.status for r in hub.requests_matching("GET", r"/revision/main$")] == [500, 200]
    assert [r.status for r in hub.requests_matching("GET", r"/tree/")][:2] == [503, 200]
    assert [r.status for r in hub.requests_matching("HEAD", r"/config\.json$")] == [502, 200]
    assert manifest["files"]["config.json"]["sha256"] == sha(files["config.json"])


def test_download_gives_up_on_a_hub_that_keeps_failing(hub, tmp_path):
    hub.add_repo(REPO, model_files())
    hub.fail("GET", r"/revision/main$", status=503, times=10)
    with pytest.raises(UserError) as info:
        download(parse_source(f"hf://{REPO}"), tmp_path / "out", cache_dir=tmp_path / "cache")
    assert "HTTP 503" in str(info.value) and "run again later" in str(info.value)
    assert len(hub.requests_matching("GET", r"/revision/main$")) == 1 + len(download_module.RETRY_WAITS_S)
    assert not (tmp_path / "out").exists()


def test_download_resumes_a_dropped_connection_with_a_range_request(hub, tmp_path):
    files = model_files(safetensors_size=12 * MiB)
    hub.add_repo(REPO, files)
    dropped_at = 11 * MiB
    hub.drop_connection(r"/model\.safetensors$", after_bytes=dropped_at)
    manifest = download(parse_source(f"hf://{REPO}"), tmp_path / "out", cache_dir=tmp_path / "cache")

    first, second = gets(hub, r"model\.safetensors")
    assert "range" not in first.headers
    start = int(second.headers["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= dropped_at and second.status == 206
    assert manifest["files"]["model.safetensors"]["sha256"] == sha(files["model.safetensors"])
    print(f"dropped after {dropped_at} bytes; resumed with Range: bytes={start}-")


def test_interrupted_download_continues_with_the_missing_files_only(hub, tmp_path):
    files = model_files()
    hub.add_repo(REPO, files)
    hub.fail("GET", r"/spiece\.model$", status=500, times=4)  # a transfer fails on every retry: the run stops
    source, cache = parse_source(f"hf://{REPO}"), tmp_path / "cache"
    with pytest.raises(UserError, match="HTTP 500"):
        download(source, tmp_path / "out", cache_dir=cache)
    assert not (tmp_path / "out").exists()  # nothing half-written looks complete
    fetched_before = {r.path.rsplit("/", 1)[1] for r in hub.requests_matching("GET", "/resolve/") if r.status == 200}
    assert fetched_before and "spiece.model" not in fetched_before

    seen = len(hub.requests)
    download(source, tmp_path / "out", cache_dir=cache)
    fetched_after = {r.path.rsplit("/", 1)[1] for r in hub.requests[seen:]
                     if r.method == "GET" and "/resolve/" in r.path}
    assert fetched_after == set(BUILD_FILES) - fetched_before
    assert (tmp_path / "out" / "spiece.model").read_bytes() == files["spiece.model"]


def test_a_file_transfer_that_fails_once_is_retried_in_the_same_run(hub, tmp_path):
    files = model_files()
    hub.add_repo(REPO, files)
    hub.fail("GET", r"/spiece\.model$", status=500)
    download(parse_source(f"hf://{REPO}"), tmp_path / "out", cache_dir=tmp_path / "cache")
    assert (tmp_path / "out" / "spiece.model").read_bytes() == files["spiece.model"]
    assert [r.status for r in hub.requests_matching("GET", r"/spiece\.model$")] == [500, 200]
    for name in set(BUILD_FILES) - {"spiece.model"}:  # complete files are not fetched again
        assert [r.status for r in hub.requests_matching("GET", rf"/resolve/.*/{re.escape(name)}$")] == [200], name


def test_partial_files_of_killed_runs_are_removed_but_live_ones_kept(hub, tmp_path):
    hub.add_repo(REPO, model_files())
    blobs = tmp_path / "cache" / f"models--{REPO.replace('/', '--')}" / "blobs"
    blobs.mkdir(parents=True)
    stale, live = blobs / f"{'a' * 64}.0badc0de.incomplete", blobs / f"{'b' * 64}.1234abcd.incomplete"
    stale.write_bytes(b"x" * 1000)
    live.write_bytes(b"y" * 1000)
    two_hours_ago = os.path.getmtime(stale) - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    download(parse_source(f"hf://{REPO}"), tmp_path / "out", cache_dir=tmp_path / "cache")
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize("bad", ["model.safetensors", "config.json"])
def test_checksum_mismatch_names_the_file_and_deletes_the_bad_copy(hub, tmp_path, bad):
    files = model_files()
    hub.add_repo(REPO, files)
    hub.serve_wrong_bytes(REPO, bad)
    served = hub.wrong_bytes[(REPO, bad)]
    source, cache = parse_source(f"hf://{REPO}"), tmp_path / "cache"
    with pytest.raises(UserError) as info:
        download(source, tmp_path / "out", cache_dir=cache)
    message = str(info.value)
    if bad == "model.safetensors":
        assert f"expected sha256 {sha(files[bad])} (hub-lfs-sha256), got {sha(served)}" in message
    else:
        blob_id = git_blob_sha1_bytes(files[bad])
        assert f"expected git blob sha1 {blob_id} (hub-git-blob-sha1), got {git_blob_sha1_bytes(served)}" in message
    assert bad in message and "run the download again" in message
    assert not (tmp_path / "out").exists()
    assert not [p for p in cache.rglob("*") if p.is_file() and p.read_bytes() == served]

    del hub.wrong_bytes[(REPO, bad)]  # the Hub serves the right bytes again
    manifest = download(source, tmp_path / "out", cache_dir=cache)
    assert manifest["files"][bad]["sha256"] == sha(files[bad])
    assert len(gets(hub, bad.replace(".", r"\."))) == 2


def test_repo_not_found(hub, tmp_path):
    with pytest.raises(UserError) as info:
        download(parse_source("hf://nobody/missing"), tmp_path / "out", cache_dir=tmp_path / "cache")
    assert "hf://nobody/missing@main: repository not found" in str(info.value)
    assert "HF_TOKEN" in str(info.value)


def test_revision_not_found(hub, tmp_path):
    hub.add_repo(REPO, model_files())
    with pytest.raises(UserError) as info:
        download(parse_source(f"hf://{REPO}@no-such-branch"), tmp_path / "out", cache_dir=tmp_path / "cache")
    assert f"hf://{REPO}@no-such-branch: revision not found (HTTP 404)" in str(info.value)


def test_private_repo_needs_a_token(hub, tmp_path, monkeypatch):
    files = model_files()
    hub.add_repo("tester/private-neox", files, private=True)
    source = parse_source("hf://tester/private-neox")
    with pytest.raises(UserError) as info:
        download(source, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert "(HTTP 401)" in str(info.value) and "hf auth login" in str(info.value)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    manifest = download(source, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert manifest["files"]["model.safetensors"]["sha256"] == sha(files["model.safetensors"])


def test_invalid_token_is_rejected_clearly(hub, tmp_path):
    hub.add_repo(REPO, model_files())
    with pytest.raises(UserError) as info:
        download(parse_source(f"hf://{REPO}"), tmp_path / "out", token="hf_wrongWRONGwrong", cache_dir=tmp_path)
    assert "rejected the token" in str(info.value) and "hf_wrong" not in str(info.value)


def test_gated_repo_says_to_accept_the_terms(hub, tmp_path):
    hub.add_repo(REPO, model_files(), gated=True)
    with pytest.raises(UserError) as info:
        download(parse_source(f"hf://{REPO}"), tmp_path / "out", token=FAKE_TOKEN, cache_dir=tmp_path / "cache")
    assert f"is a gated repository" in str(info.value) and "(HTTP 403)" in str(info.value)
    assert f"{hub.url}/{REPO}" in str(info.value)


def test_network_down_suggests_offline_mode(hf_env, tmp_path, monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(UserError) as info:
        download(parse_source(f"hf://{REPO}"), tmp_path / "out", cache_dir=tmp_path / "cache")
    assert "cannot reach the Hub" in str(info.value) and "HF_HUB_OFFLINE=1" in str(info.value)
    make_package(tmp_path / "pkg")
    with pytest.raises(UserError) as info:
        upload(tmp_path / "pkg", repo_id="tester/tiny-MLC", private=False, enabled=True, token=FAKE_TOKEN)
    assert "cannot reach the Hub" in str(info.value) and "while uploading" in str(info.value)


def test_offline_mode_builds_from_the_cache_and_still_verifies(hub, tmp_path, monkeypatch):
    files = model_files()
    hub.add_repo(REPO, files)
    source, cache = parse_source(f"hf://{REPO}"), tmp_path / "cache"
    online = download(source, tmp_path / "online", cache_dir=cache)
    hub.stop()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    offline = download(source, tmp_path / "offline", cache_dir=cache)
    assert offline["files"] == online["files"] and offline["version_id"] == online["version_id"]
    assert offline["source"]["commit"] == online["source"]["commit"] and offline["source"]["offline"] is True
    assert {c["against"] for c in offline["checks"].values()} == {"cache-etag-sha256", "cache-etag-git-blob-sha1"}
    assert all(c["ok"] for c in offline["checks"].values())

    with pytest.raises(UserError) as info:
        download(parse_source(f"hf://{REPO}@v9"), tmp_path / "v9", cache_dir=cache)
    assert "HF_HUB_OFFLINE=1" in str(info.value) and str(cache) in str(info.value)

    # a blob damaged in the cache is caught offline too, and removed
    blob = cache / f"models--{REPO.replace('/', '--')}" / "blobs" / sha(files["model.safetensors"])
    with open(blob, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff\x00")
    with pytest.raises(UserError, match="model.safetensors: expected sha256"):
        download(source, tmp_path / "offline2", cache_dir=cache)
    assert not blob.exists()


def test_local_directory_gets_the_same_layout_and_manifest(tmp_path):
    files = model_files()
    src = tmp_path / "my-model"
    for name, content in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(content)
    manifest = download(parse_source(str(src)), tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(BUILD_FILES + ["manifest.json"])
    for name in BUILD_FILES:
        assert manifest["files"][name]["sha256"] == sha(files[name])
        assert (out / name).stat().st_nlink == 1  # a copy: editing the user's directory cannot change it
    assert manifest["source"] == {"kind": "local", "uri": str(src.resolve()), "path": str(src.resolve())}


def test_download_shares_no_inode_with_the_cache_so_a_flipped_byte_stays_where_it_was_made(hub, tmp_path):
    files = model_files()
    hub.add_repo(REPO, files)
    out, cache = tmp_path / "results" / "download" / "m", tmp_path / "cache"
    download(parse_source(f"hf://{REPO}"), out, cache_dir=cache)
    blob = (cache / f"models--{REPO.replace('/', '--')}" / "blobs" / sha(files["model.safetensors"]))
    assert blob.is_file() and blob.stat().st_ino != (out / "model.safetensors").stat().st_ino
    assert (out / "model.safetensors").stat().st_nlink == 1
    with open(blob, "r+b") as handle:  # the cache is tampered with: results/ keeps the verified bytes
        handle.seek(100)
        handle.write(bytes([files["model.safetensors"][100] ^ 1]))
    assert (out / "model.safetensors").read_bytes() == files["model.safetensors"]
    verify_inputs(out)
    flipped = bytearray(files["model.safetensors"])
    flipped[200] ^= 1
    (out / "model.safetensors").write_bytes(bytes(flipped))  # results/ is tampered with: the next stage refuses
    with pytest.raises(UserError) as info:
        verify_inputs(out)
    assert str(info.value).count("\n") == 0 and sha(bytes(flipped)) in str(info.value)
    assert sha(files["model.safetensors"]) in str(info.value) and "--forcerun download" in str(info.value)


def test_local_source_symlink_pointing_outside_is_refused(tmp_path):
    src = tmp_path / "my-model"
    src.mkdir()
    for name, content in model_files().items():
        if "/" not in name:
            (src / name).write_bytes(content)
    secret = tmp_path / "outside" / "passwd"
    secret.parent.mkdir()
    secret.write_text("root:x:0:0\n")
    (src / "LICENSE").unlink()
    (src / "LICENSE").symlink_to(secret)
    with pytest.raises(UserError, match=r"LICENSE is a symlink to .*outside the source directory"):
        download(parse_source(str(src)), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (src / "LICENSE").unlink()
    (src / "weights").mkdir()
    (src / "model.safetensors").rename(src / "weights" / "model.safetensors")
    (src / "model.safetensors").symlink_to("weights/model.safetensors")  # inside the source: fine
    manifest = download(parse_source(str(src)), tmp_path / "out")
    assert manifest["files"]["model.safetensors"]["sha256"] == sha(model_files()["model.safetensors"])


def test_shard_index_naming_a_missing_shard_is_an_error(tmp_path):
    src = tmp_path / "sharded"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "model-00001-of-00002.safetensors").write_bytes(b"x")
    (src / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(UserError, match="model-00002-of-00002.safetensors"):
        download(parse_source(str(src)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- upload -----------------------------------------------------------------------------------------------


def make_package(directory: Path, *, shard: bytes = rnd(50_000, 9), card_extra: str = "") -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params_shard_0.bin").write_bytes(shard)
    (directory / "tensor-cache.json").write_text('{"records": []}\n')
    (directory / "mlc-chat-config.json").write_text('{"model_type": "gpt_neox", "quantization": "q4f16_0"}\n')
    (directory / "README.md").write_text(
        "---\nlibrary_name: mlc-llm\nbase_model: line-corp/tiny-neox\nlicense: apache-2.0\nlanguage:\n- ja\n"
        f"tags:\n- mlc-llm\npipeline_tag: text-generation\n---\n# tiny-neox q4f16_0{card_extra}\n"
    )
    return write_manifest(directory, stage="package")


def test_upload_dry_run_sends_nothing_and_prints_the_plan(hub, tmp_path, capsys):
    manifest = make_package(tmp_path / "pkg")
    record = upload(tmp_path / "pkg", repo_id="tester/tiny-MLC", private=True, enabled=False)
    assert hub.requests == []
    assert record["dry_run"] is True and record["uploaded"] is False and record["tag"] == manifest["version_id"]
    sizes = {f["path"]: (f["size"], f["sha256"]) for f in record["files"]}
    for path in ["params_shard_0.bin", "tensor-cache.json", "mlc-chat-config.json", "README.md", "manifest.json"]:
        data = (tmp_path / "pkg" / path).read_bytes()
        assert sizes[path] == (len(data), sha(data))
    printed = capsys.readouterr().out
    assert "[dry run]" in printed and manifest["version_id"] in printed and "params_shard_0.bin" in printed


def test_upload_needs_a_token_when_enabled(hub, tmp_path):
    make_package(tmp_path / "pkg")
    with pytest.raises(UserError, match="HF_TOKEN"):
        upload(tmp_path / "pkg", repo_id="tester/tiny-MLC", private=True, enabled=True)
    assert hub.requests == []


def test_upload_publishes_tags_and_is_idempotent(hub, tmp_path):
    manifest = make_package(tmp_path / "pkg")
    version = manifest["version_id"]
    record = upload(tmp_path / "pkg", repo_id="tester/tiny-MLC", private=True, enabled=True, token=FAKE_TOKEN)
    assert record["uploaded"] is True
    repo = hub.repos["tester/tiny-MLC"]
    assert repo.private is True and repo.tags == {version: record["commit"]}
    published = hub.files_at("tester/tiny-MLC", version)
    for path in (tmp_path / "pkg").iterdir():
        assert published[path.name] == path.read_bytes()
    assert record["url"] == f"{hub.url}/tester/tiny-MLC/tree/{version}"

    seen = len(hub.requests)
    again = upload(tmp_path / "pkg", repo_id="tester/tiny-MLC", private=True, enabled=True, token=FAKE_TOKEN)
    assert again["uploaded"] is False and again["commit"] == record["commit"] and again["sent"] == []
    assert "already published" in again["message"]
    assert {r.method for r in hub.requests[seen:]} == {"GET"}  # looked, sent nothing

    # a rebuilt manifest (new timings) with the same files is the same version: still nothing sent
    write_manifest(tmp_path / "pkg", stage="package", timings={"package": 1.5})
    seen = len(hub.requests)
    assert upload(tmp_path / "pkg", repo_id="tester/tiny-MLC", private=True, enabled=True,
                  token=FAKE_TOKEN)["uploaded"] is False
    assert {r.method for r in hub.requests[seen:]} == {"GET"}


def test_upload_of_a_new_version_sends_only_what_changed(hub, tmp_path):
    make_package(tmp_path / "v1")
    upload(tmp_path / "v1", repo_id="tester/tiny-MLC", private=False, enabled=True, token=FAKE_TOKEN)
    second = make_package(tmp_path / "v2", card_extra=" (rebuilt card)")
    seen = len(hub.requests)
    record = upload(tmp_path / "v2", repo_id="tester/tiny-MLC", private=False, enabled=True, token=FAKE_TOKEN)
    assert record["uploaded"] is True and record["tag"] == second["version_id"]
    assert len(hub.repos["tester/tiny-MLC"].tags) == 2
    assert [r for r in hub.requests[seen:] if r.method == "PUT"] == []  # the unchanged shard was not sent again
    assert hub.requests_matching("POST", "/commit/")[-1].status == 200


def test_upload_of_a_hub_layout_folder_with_an_explicit_version_id(hub, tmp_path):
    """The workflow uploads a Hub layout made from the package (no manifest.json of its own)."""
    folder = tmp_path / "hub-layout"
    (folder / "lib").mkdir(parents=True)
    (folder / "params_shard_0.bin").write_bytes(rnd(20_000, 11))
    (folder / "lib" / "model-iphone.tar").write_bytes(rnd(3_000, 12))
    (folder / "README.md").write_text("---\nlibrary_name: mlc-llm\n---\n# card\n")
    (folder / "hf2mlc-manifest.json").write_text('{"timings": {"package": 1.0}}')
    first = upload(folder, repo_id="tester/tiny-MLC", private=False, enabled=True, token=FAKE_TOKEN,
                   version_id="0123abcd4567")
    assert hub.repos["tester/tiny-MLC"].tags == {"0123abcd4567": first["commit"]}
    assert hub.files_at("tester/tiny-MLC", "0123abcd4567")["lib/model-iphone.tar"] == rnd(3_000, 12)
    (folder / "hf2mlc-manifest.json").write_text('{"timings": {"package": 2.0}}')  # rebuilt: other timings
    again = upload(folder, repo_id="tester/tiny-MLC", private=False, enabled=True, token=FAKE_TOKEN,
                   version_id="0123abcd4567")
    assert again["uploaded"] is False and again["commit"] == first["commit"]
    with pytest.raises(UserError, match="cannot be a git tag"):
        upload(folder, repo_id="tester/tiny-MLC", private=False, enabled=False, version_id="bad tag")


def test_stale_file_of_the_previous_version_is_deleted_in_the_same_commit(hub, tmp_path):
    first = make_package(tmp_path / "v1")
    (tmp_path / "v1" / "params_shard_1.bin").write_bytes(rnd(9_000, 21))
    first = write_manifest(tmp_path / "v1", stage="package")
    upload(tmp_path / "v1", repo_id="tester/tiny-MLC", private=False, enabled=True, token=FAKE_TOKEN)
    second = make_package(tmp_path / "v2", shard=rnd(50_000, 22))  # one shard fewer
    commits = len(hub.repos["tester/tiny-MLC"].commits)
    record = upload(tmp_path / "v2", repo_id="tester/tiny-MLC", private=False, enabled=True, token=FAKE_TOKEN)
    assert len(hub.repos["tester/tiny-MLC"].commits) == commits + 1
    assert record["deleted"] == ["params_shard_1.bin"] and record["verified"] is True
    published = hub.files_at("tester/tiny-MLC", second["version_id"])
    local = {p.name: p.read_bytes() for p in (tmp_path / "v2").iterdir()}
    assert {k: v for k, v in published.items() if k != ".gitattributes"} == local
    assert hub.files_at("tester/tiny-MLC", first["version_id"])["params_shard_1.bin"] == rnd(9_000, 21)


def test_tag_failure_after_the_commit_is_completed_on_rerun_and_not_reported_as_uploaded(hub, tmp_path):
    manifest = make_package(tmp_path / "pkg")
    hub.fail("POST", r"/tag/", status=500)
    with pytest.raises(UserError, match="HTTP 500"):
        upload(tmp_path / "pkg", repo_id="tester/tiny-MLC", private=False, enabled=True, token=FAKE_TOKEN)
    repo = hub.repos["tester/tiny-MLC"]
    assert repo.tags == {} and hub.files_at("tester/tiny-MLC")["params_shard_0.bin"] == rnd(50_000, 9)
    commits, seen = len(repo.commits), len(hub.requests)
    record = upload(tmp_path / "pkg", repo_id="tester/tiny-MLC", private=False, enabled=True, token=FAKE_TOKEN)
    assert record["uploaded"] is False and record["sent"] == [] and "stopped before tagging" in record["message"]
    assert len(repo.commits) == commits and repo.tags == {manifest["version_id"]: repo.branches["main"]}
    assert hub.requests_matching("POST", "/commit/")[-1] not in hub.requests[seen:]


def test_commit_failure_after_the_repo_was_created_is_completed_on_rerun(hub, tmp_path):
    manifest = make_package(tmp_path / "pkg")
    hub.fail("POST", r"/commit/", status=500)
    with pytest.raises(UserError, match="HTTP 500"):
        upload(tmp_path / "pkg", repo_id="tester/tiny-MLC", private=False, enabled=True, token=FAKE_TOKEN)
    assert "tester/tiny-MLC" in hub.repos and hub.repos["tester/tiny-MLC"].tags == {}
    record = upload(tmp_path / "pkg", repo_id="tester/tiny-MLC", private=False, enabled=True, token=FAKE_TOKEN)
    assert record["uploaded"] is True and sorted(record["sent"]) == sorted([*manifest["files"], "manifest.json"])
    assert hub.files_at("tester/tiny-MLC", manifest["version_id"])["params_shard_0.bin"] == rnd(50_000, 9)


def test_upload_verification_catches_a_hub_that_holds_other_files_after_tagging(hub, tmp_path, monkeypatch):
    make_package(tmp_path / "pkg")
    import hub_server

    real = hub_server._Handler._create_tag

    def tag_then_lose_a_file(self, repo, revision, payload):
        real(self, repo, revision, payload)
        repo.commits[repo.tags[payload["tag"]]].files.pop("tensor-cache.json")

    monkeypatch.setattr(hub_server._Handler, "_create_tag", tag_then_lose_a_file)
    with pytest.raises(UserError, match=r"does not hold exactly the bundle \(missing on the Hub: tensor-cache.json\)"):
        upload(tmp_path / "pkg", repo_id="tester/tiny-MLC", private=False, enabled=True, token=FAKE_TOKEN)


def test_upload_refuses_a_tag_with_other_content(hub, tmp_path):
    manifest = make_package(tmp_path / "pkg")
    hub.add_repo("tester/tiny-MLC", {"params_shard_0.bin": b"something else"})
    hub.tag("tester/tiny-MLC", manifest["version_id"])
    commits = len(hub.repos["tester/tiny-MLC"].commits)
    with pytest.raises(UserError, match="already exists on commit .* but holds other content"):
        upload(tmp_path / "pkg", repo_id="tester/tiny-MLC", private=False, enabled=True, token=FAKE_TOKEN)
    assert len(hub.repos["tester/tiny-MLC"].commits) == commits


def test_upload_never_fills_a_public_repo_meant_to_be_private(hub, tmp_path):
    make_package(tmp_path / "pkg")
    hub.add_repo("tester/tiny-MLC", private=False)
    with pytest.raises(UserError, match="exists and is public, but upload.private is true"):
        upload(tmp_path / "pkg", repo_id="tester/tiny-MLC", private=True, enabled=True, token=FAKE_TOKEN)
    assert hub.requests_matching("POST", "/commit/") == []


def test_upload_rejects_a_bad_token_and_a_foreign_namespace(hub, tmp_path):
    make_package(tmp_path / "pkg")
    with pytest.raises(UserError) as info:
        upload(tmp_path / "pkg", repo_id="tester/tiny-MLC", private=False, enabled=True, token="hf_notAvalidOne")
    assert "rejected the token" in str(info.value) and "hf_notAvalidOne" not in str(info.value)
    with pytest.raises(UserError, match=r"HTTP 403"):
        upload(tmp_path / "pkg", repo_id="someone-else/tiny-MLC", private=False, enabled=True, token=FAKE_TOKEN)


def test_upload_refuses_a_package_edited_after_its_manifest(hub, tmp_path):
    make_package(tmp_path / "pkg")
    (tmp_path / "pkg" / "mlc-chat-config.json").write_text('{"edited": true}')
    (tmp_path / "pkg" / "notes.txt").write_text("stray")
    with pytest.raises(UserError) as info:
        upload(tmp_path / "pkg", repo_id="tester/tiny-MLC", private=False, enabled=False)
    assert "mlc-chat-config.json" in str(info.value) and "notes.txt" in str(info.value)
    with pytest.raises(UserError, match="owner/name"):
        upload(tmp_path / "pkg", repo_id="no-namespace", private=False, enabled=False)


# --- the token ----------------------------------------------------------------------------------------------


def test_resolve_token_prefers_the_environment_then_the_stored_login(hf_env, monkeypatch):
    assert resolve_token() is None
    stored = Path(constants.HF_TOKEN_PATH)
    stored.parent.mkdir(parents=True)
    stored.write_text("hf_storedLoginToken\n")
    assert resolve_token() == "hf_storedLoginToken"
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    assert resolve_token() == FAKE_TOKEN


def test_the_token_never_leaks(hub, tmp_path, monkeypatch, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    hub.add_repo("tester/private-neox", model_files(), private=True)
    hub.add_repo("line-corp/gated", model_files(), gated=True)
    results = tmp_path / "results"
    errors = []

    download(parse_source("hf://tester/private-neox"), results / "download", cache_dir=tmp_path / "cache")
    for failing in ("hf://line-corp/gated", "hf://tester/private-neox@nope"):
        with pytest.raises(UserError) as info:
            download(parse_source(failing), results / "failed", cache_dir=tmp_path / "cache")
        errors.append(str(info.value))
    make_package(results / "package")
    records = [upload(results / "package", repo_id="tester/tiny-MLC", private=True, enabled=enabled)
               for enabled in (False, True, True)]
    (results / "upload.json").write_text(json.dumps(records))

    assert {r.user for r in hub.requests if r.method != "PUT"} == {"tester"}  # the token was in use
    secret = FAKE_TOKEN.encode()
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink() and secret in p.read_bytes()]
    assert leaked == []
    captured = capfd.readouterr()
    for text in (captured.out, captured.err, caplog.text, *errors, json.dumps(records)):
        assert FAKE_TOKEN not in text and FAKE_TOKEN[3:15] not in text
    assert caplog.records  # the logs were really captured


def test_credentials_in_hf_endpoint_are_redacted_and_the_error_does_not_blame_the_token(hub, tmp_path, monkeypatch,
                                                                                        capfd, caplog):
    caplog.set_level(logging.DEBUG)
    factory = logging.getLogRecordFactory()
    hub.add_repo(REPO, model_files())
    password = "pw-" + "x7Qz9" * 3
    monkeypatch.setenv("HF_ENDPOINT", hub.url.replace("http://", f"http://alice:{password}@"))
    with pytest.raises(UserError) as info:  # the fake Hub, like the real one, knows no basic auth
        download(parse_source(f"hf://{REPO}"), tmp_path / "results" / "download", cache_dir=tmp_path / "cache",
                 token=FAKE_TOKEN)
    message = str(info.value)
    assert "HF_ENDPOINT carries a user name and password" in message and "rejected the token" not in message
    make_package(tmp_path / "results" / "package")
    record = upload(tmp_path / "results" / "package", repo_id="tester/tiny-MLC", private=True, enabled=False)
    (tmp_path / "results" / "upload.json").write_text(json.dumps(record))
    assert "HTTP Request: GET http://***@127.0.0.1" in caplog.text  # the client's INFO line, masked
    captured = capfd.readouterr()
    for text in (message, caplog.text, captured.out, captured.err, json.dumps(record)):
        assert password not in text and "alice" not in text
    assert [p for p in tmp_path.rglob("*") if p.is_file() and password.encode() in p.read_bytes()] == []
    assert logging.getLogRecordFactory() is factory  # masked while hf2mlc talked to the Hub, the process's own after


def test_log_redaction_is_scoped_and_restores_the_record_factory():
    from hf2mlc.hub.connection import redacted_logs

    def message() -> str:
        return logging.getLogger("httpx").makeRecord("httpx", logging.INFO, __file__, 1, "HTTP Request: GET %s",
                                                     ("http://alice:pw@mirror/api/models",), None).getMessage()

    before = logging.getLogRecordFactory()
    assert message() == "HTTP Request: GET http://alice:pw@mirror/api/models"  # importing hf2mlc replaced nothing
    with redacted_logs():
        assert message() == "HTTP Request: GET http://***@mirror/api/models"
        with redacted_logs():  # nested (an upload inside a download's process): still masked, once
            assert message() == "HTTP Request: GET http://***@mirror/api/models"
        assert message() == "HTTP Request: GET http://***@mirror/api/models"
    assert logging.getLogRecordFactory() is before
    with pytest.raises(RuntimeError), redacted_logs():
        raise RuntimeError("a failed upload")
    assert logging.getLogRecordFactory() is before
