"""The workflow end to end on the demo model, with Snakemake's own dry run as the oracle for reruns.

The slow part (one full run of every stage, then one rebuild from an empty results/) is shared by the
tests below through a session fixture; the incremental tests only ask Snakemake what it *would* run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from hf2mlc.manifest import read_manifest, verify_manifest
from workflow_helpers import REPO, copy_workflow, planned_jobs, snakemake

DEMO = "model=demo"


# ---------------------------------------------------------------- fast: no stage runs


def test_lint_is_clean(tmp_path: Path) -> None:
    work = copy_workflow(tmp_path / "wf")
    proc = snakemake(work, "--lint")
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_dry_run_plans_the_card_stages(tmp_path: Path) -> None:
    work = copy_workflow(tmp_path / "wf")
    jobs = planned_jobs(work, "iphone_bundle")
    assert jobs == sorted([
        f"download[{DEMO}]",
        f"patch[{DEMO}]",
        f"tokenizer[{DEMO}]",
        f"convert[{DEMO},quant=q0f16]",
        f"convert[{DEMO},quant=q4f16_0]",
        f"compile[{DEMO},target=host,quant=q0f16]",
        f"compile[{DEMO},target=mac,quant=q0f16]",
        f"compile[{DEMO},target=host,quant=q4f16_0]",
        f"compile[{DEMO},target=iphone,quant=q4f16_0]",
        f"check[{DEMO},quant=q0f16]",
        f"check[{DEMO},quant=q4f16_0]",
        f"reference[{DEMO}]",
        f"reference_answers[{DEMO}]",
        f"evaluate[{DEMO},quant=q4f16_0]",
        f"package[{DEMO},device=iphone]",
    ])


def test_schema_and_wildcard_name_exactly_the_registered_quantizations() -> None:
    from hf2mlc.quantization import QUANTIZATIONS
    from hf2mlc.spec import QUANTIZATION_PATTERN

    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text(encoding="utf-8"))
    assert schema["$defs"]["quantization"]["enum"] == list(QUANTIZATIONS)
    assert QUANTIZATION_PATTERN.split("|") == list(QUANTIZATIONS)


def test_config_names_bundled_evaluation_texts_and_prompts() -> None:
    """Every evaluation text and prompt list the shipped config names by name is bundled (or the demo's own)."""
    from hf2mlc.evaluation_text import DATA, DEMO_HELDOUT, load_prompts, names_a_file

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    settings = [cfg["defaults"]["evaluation"], *(m.get("evaluation", {}) for m in cfg["models"])]
    texts = {s["text"] for s in settings if "text" in s}
    assert texts and not any(names_a_file(t) for t in texts)
    assert all(t == DEMO_HELDOUT or (DATA / f"{t}.txt").is_file() for t in texts)
    assert all(load_prompts(s["prompts"]) for s in settings if "prompts" in s)


def test_slurm_profile_dry_run(tmp_path: Path) -> None:
    work = copy_workflow(tmp_path / "wf")
    proc = snakemake(work, "--profile", "profiles/slurm", "--dry-run", "iphone_bundle")
    assert "This was a dry-run" in proc.stdout + proc.stderr


def _edit_config(work: Path, edit) -> Path:
    path = work / "config" / "config.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda c: c["defaults"]["targets"]["iphone"].__setitem__("quantization", "q9f16_0"), "quantization"),
        (lambda c: c["models"][0].__setitem__("family", "no-such-family"), "config/families/no-such-family.yaml"),
        (lambda c: c["models"].append(dict(c["models"][0])), "more than once"),
        (lambda c: c["upload"].__setitem__("repo", "not a repo"), "repo"),
        (lambda c: c["defaults"]["targets"]["iphone"]["quality_gate"].__setitem__("min_top1", 1.5), "min_top1"),
    ],
    ids=["bad-quantization", "unknown-family", "duplicate-id", "bad-upload-repo", "bad-quality-gate"],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, edit, needle: str) -> None:
    work = copy_workflow(tmp_path / "wf")
    _edit_config(work, edit)
    proc = snakemake(work, "--dry-run", "iphone_bundle", check=False)
    assert proc.returncode != 0
    assert needle in proc.stdout + proc.stderr
    assert not (work / "results").exists()


# ---------------------------------------------------------------- slow: the real DAG


@pytest.fixture(scope="session")
def built(demo_workflow: dict) -> dict:
    """One full run of every stage (tests/conftest.py; the rebuild test runs a second)."""
    return demo_workflow


def _assert_plan(work: Path, expected: set[str], *args: str) -> None:
    jobs = planned_jobs(work, "all", *args)
    assert set(jobs) == expected, f"planned {jobs}, expected {sorted(expected)}"


def _comparable(path: Path) -> bytes:
    """File bytes, except that a manifest's measurements (wall clock, peak memory) are left out."""
    if path.name != "manifest.json":
        return path.read_bytes()
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("timings", None)
    data.pop("resources", None)
    return json.dumps(data, sort_keys=True).encode()


def _copy_of_the_run(built: dict, tmp_path: Path) -> Path:
    """A fresh workflow copy holding the session run's results and Snakemake metadata (so it is up to date)."""
    source = built["work"]
    work = copy_workflow(tmp_path / "wf")
    shutil.copytree(source / "results", work / "results", symlinks=True)
    shutil.copytree(source / ".snakemake" / "metadata", work / ".snakemake" / "metadata")
    return work


@pytest.mark.slow
def test_rebuild_from_empty_results_is_byte_identical(built: dict, tmp_path: Path) -> None:
    """Every stage after the download run again from nothing gives the same bytes. The download (the demo's
    training, a third of the run) is kept: test_demo's test_two_builds_are_byte_identical builds it again.

    The module's longest test (a second run of the workflow), so it comes first among the DAG tests: on its
    own copy of the run, and while it runs the other xdist worker takes the module's shorter tests, instead
    of idling at the end of the session while this one runs last."""
    work = _copy_of_the_run(built, tmp_path)
    first = work / "results-first"
    shutil.move(work / "results", first)
    shutil.copytree(first / "download", work / "results" / "download", symlinks=True)
    jobs = planned_jobs(work, "all")
    assert jobs and not [job for job in jobs if job.startswith("download[")], jobs
    snakemake(work, "--cores", "2", "all")
    second = work / "results"
    skip = {"logs", "benchmarks"}
    files = sorted(
        p.relative_to(first) for p in first.rglob("*") if p.is_file() and p.relative_to(first).parts[0] not in skip
        and p.name != "versions.jsonl"
    )
    assert files, "the first run produced nothing"
    missing = [str(rel) for rel in files if not (second / rel).is_file()]
    assert missing == [], "missing from the rebuild"
    differ = [str(rel) for rel in files if _comparable(first / rel) != _comparable(second / rel)]
    assert differ == [], "these differ between two builds"
    for device in ("iphone", "mac"):
        a = read_manifest(first / "package" / "demo" / device)["version_id"]
        b = read_manifest(second / "package" / "demo" / device)["version_id"]
        assert a == b


@pytest.mark.slow
def test_noop_rerun_schedules_nothing(built: dict) -> None:
    start = time.perf_counter()
    jobs = planned_jobs(built["work"], "all")
    seconds = time.perf_counter() - start
    assert jobs == []
    assert seconds < 30, f"a no-op dry run took {seconds:.1f} s"


@pytest.mark.slow
def test_iphone_context_window_change_reruns_only_the_iphone_build(built: dict) -> None:
    work = built["work"]
    original = (work / "config" / "config.yaml").read_text(encoding="utf-8")
    try:
        _edit_config(work, lambda c: c["defaults"]["targets"]["iphone"].__setitem__("context_window_size", 512))
        _assert_plan(work, {
            f"compile[{DEMO},target=iphone,quant=q4f16_0]",
            f"package[{DEMO},device=iphone]",
        })
    finally:
        (work / "config" / "config.yaml").write_text(original, encoding="utf-8")


@pytest.mark.slow
def test_iphone_quantization_change_reruns_only_the_iphone_path(built: dict) -> None:
    work = built["work"]
    original = (work / "config" / "config.yaml").read_text(encoding="utf-8")
    try:
        _edit_config(work, lambda c: c["defaults"]["targets"]["iphone"].__setitem__("quantization", "q4f16_1"))
        _assert_plan(work, {
            f"convert[{DEMO},quant=q4f16_1]",
            f"compile[{DEMO},target=host,quant=q4f16_1]",
            f"compile[{DEMO},target=iphone,quant=q4f16_1]",
            f"check[{DEMO},quant=q4f16_1]",
            f"evaluate[{DEMO},quant=q4f16_1]",
            f"package[{DEMO},device=iphone]",
        })
    finally:
        (work / "config" / "config.yaml").write_text(original, encoding="utf-8")


@pytest.mark.slow
def test_template_change_reruns_patch_answers_and_package_only(built: dict) -> None:
    work = built["work"]
    family = work / "config" / "families" / "line.yaml"
    original = family.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(original)
        data["template"]["system_message"] = "あなたは親切なアシスタントです。"
        family.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
        # The evaluations show answers under this template: they are redone, the reference on the text is not.
        _assert_plan(work, {
            f"patch[{DEMO}]", f"reference_answers[{DEMO}]", f"evaluate[{DEMO},quant=q0f16]",
            f"evaluate[{DEMO},quant=q4f16_0]", f"package[{DEMO},device=iphone]", f"package[{DEMO},device=mac]",
        })
    finally:
        family.write_text(original, encoding="utf-8")


PACKAGES = {f"package[{DEMO},device=iphone]", f"package[{DEMO},device=mac]"}
WEIGHT_PATH = {  # every job that reads converted weights, and what follows them
    f"convert[{DEMO},quant=q0f16]",
    f"convert[{DEMO},quant=q4f16_0]",
    f"check[{DEMO},quant=q0f16]",
    f"check[{DEMO},quant=q4f16_0]",
    f"evaluate[{DEMO},quant=q0f16]",
    f"evaluate[{DEMO},quant=q4f16_0]",
    f"compile[{DEMO},target=iphone,quant=q4f16_0]",  # waits on the q0f16 check
    *PACKAGES,
}
REFERENCE = {f"reference[{DEMO}]", f"reference_answers[{DEMO}]"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("edited", "expected"),
    [
        ("scripts/tokenizer.py", {f"tokenizer[{DEMO}]", *PACKAGES}),
        # The stage's own module: only the tokenizer stage (and the bundles) import it.
        ("src/hf2mlc/tokenizer/stage.py", {f"tokenizer[{DEMO}]", *PACKAGES}),
        # How a bundle's tokenizer reads text: the tokenizer stage, patch (families check templates with
        # it), convert (a calibrated method tokenizes its calibration text with it), the reference, its
        # answers, check and evaluate (they tokenize the evaluation text and prompts with it), the iPhone
        # compile (it waits on the check), and the bundles.
        ("src/hf2mlc/tokenizer/bundle.py", WEIGHT_PATH | REFERENCE | {f"tokenizer[{DEMO}]", f"patch[{DEMO}]"}),
        # A deep module: the packers, imported by convert, by check (dequantizing), which evaluate follows,
        # and by the reference module (its tensor-cache weight source); not by compile, which takes no
        # weights, nor by download, patch, tokenizer or package.
        ("src/hf2mlc/quantization/group.py", WEIGHT_PATH | REFERENCE),
        ("src/hf2mlc/compiler_pass/cpu_schedule.py", {
            f"compile[{DEMO},target=host,quant=q0f16]",
            f"compile[{DEMO},target=host,quant=q4f16_0]",
            f"compile[{DEMO},target=mac,quant=q0f16]",
            f"compile[{DEMO},target=iphone,quant=q4f16_0]",
            f"check[{DEMO},quant=q0f16]",
            f"check[{DEMO},quant=q4f16_0]",
            f"evaluate[{DEMO},quant=q0f16]",
            f"evaluate[{DEMO},quant=q4f16_0]",
            *PACKAGES,
        }),
    ],
    ids=["script", "tokenizer-stage", "tokenizer-bundle", "quantization-group", "cpu-schedule"],
)
def test_code_edit_reruns_every_rule_that_imports_it(built: dict, edited: str, expected: set[str]) -> None:
    work = built["work"]
    path = work / edited
    original, stat = path.read_text(encoding="utf-8"), path.stat()
    try:
        path.write_text(original + "\n# an edit\n", encoding="utf-8")
        _assert_plan(work, expected)
    finally:
        path.write_text(original, encoding="utf-8")
        # Snakemake reruns a script rule whose script is newer than its output: put the mtime back too.
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.slow
def test_local_source_file_replaced_in_place_reruns_download(built: dict) -> None:
    """A local checkpoint is an input file by file: `cp` over one of its files (the directory's mtime does
    not change) reruns download and everything after it."""
    work = built["work"]
    source = work / "local-model"
    shutil.copytree(work / "results" / "download" / "demo", source, ignore=shutil.ignore_patterns("manifest.json"))
    original = (work / "config" / "config.yaml").read_text(encoding="utf-8")
    try:
        _edit_config(work, lambda c: c["models"].__setitem__(0, {**c["models"][0], "id": "local", "source": str(source)}))
        snakemake(work, "--cores", "1", "results/download/local")
        assert planned_jobs(work, "results/download/local") == []
        time.sleep(1.1)  # a new mtime, on file systems that keep seconds
        # A fixed file copied over the broken one (Snakemake compares small files by checksum, so the
        # content differs, as a fix's would).
        fixed = work / "config.json.fixed"
        fixed.write_text((source / "config.json").read_text(encoding="utf-8") + "\n", encoding="utf-8")
        subprocess.run(["cp", str(fixed), str(source / "config.json")], check=True)
        assert planned_jobs(work, "results/download/local") == ["download[model=local]"]
        jobs = planned_jobs(work, "iphone_bundle")
        assert "download[model=local]" in jobs and "package[model=local,device=iphone]" in jobs
    finally:
        (work / "config" / "config.yaml").write_text(original, encoding="utf-8")
        shutil.rmtree(work / "results" / "download" / "local", ignore_errors=True)
        shutil.rmtree(source, ignore_errors=True)


@pytest.mark.slow
def test_every_output_has_an_intact_manifest(built: dict) -> None:
    results = built["work"] / "results"
    stage_dirs = [p.parent for p in results.rglob("manifest.json")]
    stages = {read_manifest(d)["stage"] for d in stage_dirs}
    assert stages == {"download", "patch", "convert", "compile", "check", "tokenizer", "reference", "reference_answers",
                      "evaluate", "package"}
    for directory in stage_dirs:
        assert verify_manifest(directory) == [], directory
        manifest = read_manifest(directory)
        assert manifest["tools"]["apache-tvm"] == "0.27.0.post1"
        assert all(entry["size"] > 0 for entry in manifest["files"].values()), directory
    versions = [json.loads(line) for line in (results / "versions.jsonl").read_text().splitlines()]
    assert {(v["device"], v["version_id"]) for v in versions} == {
        (device, read_manifest(results / "package" / "demo" / device)["version_id"]) for device in ("iphone", "mac")
    }
    for device in ("iphone", "mac"):
        assert (results / "logs" / "package" / "demo" / f"{device}.log").is_file()
        assert (results / "benchmarks" / "package" / "demo" / f"{device}.tsv").is_file()


@pytest.mark.slow
def test_every_rule_code_digest_covers_the_modules_its_jobs_loaded(built: dict) -> None:
    """The oracle is the jobs themselves: every hf2mlc module a job had loaded when it finished (its log's
    last line) is a file of its rule's computed closure, so editing it changes the rule's code digest."""
    from hf2mlc.closure import module_path, rule_files
    from hf2mlc.snakemake_script import LOADED_MODULES_LINE

    work = built["work"]
    seen = set()
    for log in sorted((work / "results" / "logs").rglob("*.log")):
        rule = log.relative_to(work / "results" / "logs").parts[0]
        lines = [line for line in log.read_text(encoding="utf-8").splitlines() if line.startswith(LOADED_MODULES_LINE)]
        assert lines, f"{log}: no {LOADED_MODULES_LINE!r} line"
        loaded = lines[-1][len(LOADED_MODULES_LINE):].split()
        covered = set(rule_files(rule, work))
        for module in loaded:
            path = module_path(module)
            assert path is not None and path in covered, f"rule {rule}: {module} is not in its code digest"
        seen.add(rule)
    assert seen == {"download", "patch", "convert", "compile", "check", "tokenizer", "reference", "reference_answers",
                    "evaluate", "package"}


@pytest.mark.slow
def test_hub_in_and_out_through_the_workflow(built: dict, tmp_path: Path) -> None:
    """download and upload against a local Hub: a pinned, verified download that survives a server error
    and a dropped connection, then a real upload, tagged with the bundle's version id, that a rerun does
    not repeat — and the token in no file, log or output.

    The Hub serves the session run's demo download, so the stages between would rebuild, from the same
    bytes, what that run built: the download is shown byte-identical to it, and the upload sends that
    run's iPhone bundle."""
    from hub_server import FAKE_TOKEN, FakeHub

    demo = built["work"] / "results" / "download" / "demo"
    files = {p.name: p.read_bytes() for p in demo.iterdir() if p.is_file() and p.name not in ("manifest.json", ".snakemake_timestamp")}
    work = _copy_of_the_run(built, tmp_path)
    name = yaml.safe_load((work / "config" / "config.yaml").read_text(encoding="utf-8"))["models"][0]["name"]

    def configure(c: dict) -> None:
        hub_source = {"id": "hubdemo", "source": "hf://line-corporation/demo-neox@v1", "name": "hubdemo-neox",
                      "enabled": False}  # downloaded by its path below; not part of `all` or the upload
        c["models"] = [c["models"][0], hub_source]
        c["upload"] = {"enabled": True, "repo": "tester/{name}-{quantization}-MLC", "private": True, "devices": ["iphone"]}

    _edit_config(work, configure)
    with FakeHub(max_lifetime_s=1500) as hub:
        commit = hub.add_repo("line-corporation/demo-neox", files)
        hub.tag("line-corporation/demo-neox", "v1")
        hub.fail("GET", r"/resolve/.*/config\.json", status=500)
        hub.drop_connection(r"/resolve/.*/model\.safetensors", after_bytes=100_000)
        env = {**hub.env(), "HF_TOKEN": FAKE_TOKEN, "HF_HOME": str(tmp_path / "hf-home")}

        download = snakemake(work, "--cores", "2", "results/download/hubdemo", env=env)
        results = work / "results"
        manifest = read_manifest(results / "download" / "hubdemo")
        assert manifest["source"]["commit"] == commit
        for file_name, content in files.items():
            if file_name in manifest["files"]:
                assert (results / "download" / "hubdemo" / file_name).read_bytes() == content
        assert "model.safetensors" in manifest["files"] and "spiece.model" in manifest["files"]
        assert [r.status for r in hub.requests_matching("GET", r"/resolve/.*/config\.json")][:2] == [500, 200]
        # The dropped transfer was fetched again (resumed, or re-fetched when the 500 restarted the snapshot).
        assert len(hub.requests_matching("GET", r"/resolve/.*/model\.safetensors")) >= 2

        first = snakemake(work, "--cores", "2", "upload", env=env)
        package = results / "package" / "demo" / "iphone"
        version = read_manifest(package)["version_id"]
        repo_id = f"tester/{name}-q4f16_0-MLC"
        assert hub.repos[repo_id].private
        published = hub.files_at(repo_id, version)
        model_dir = package / "bundle" / f"{name}-q4f16_0-MLC"
        for path in model_dir.iterdir():
            assert published[path.name] == path.read_bytes(), path.name
        assert published["README.md"] == (package / "README.md").read_bytes()
        for lib in (package / "lib").iterdir():  # libmodel_iphone.a where llvm-ar made one, always the .tar
            assert published[f"lib/{lib.name}"] == lib.read_bytes(), lib.name
        record = json.loads((results / "upload" / "demo" / "iphone.json").read_text())
        assert record["uploaded"] is True and record["tag"] == version and record["repo_id"] == repo_id

        commits_before = len(hub.requests_matching("POST", r"/commit/"))
        second = snakemake(work, "--cores", "2", "upload", "--forcerun", "upload", env=env)
        assert len(hub.requests_matching("POST", r"/commit/")) == commits_before
        record = json.loads((results / "upload" / "demo" / "iphone.json").read_text())
        assert record["uploaded"] is False

    for path in work.rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path
    for proc in (download, first, second):
        assert FAKE_TOKEN not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_quality_gate_blocks_a_failing_bundle(built: dict, tmp_path: Path) -> None:
    """The default gates pass the demo; a gate it cannot meet reruns only the package, which records the
    failed verdict (file, manifest, card), and `snakemake upload` then refuses with one line naming it."""
    from huggingface_hub import ModelCard

    work = _copy_of_the_run(built, tmp_path)
    package = work / "results" / "package" / "demo" / "iphone"
    assert json.loads((package / "quality-gate.json").read_text())["passed"] is True

    _edit_config(work, lambda c: c["defaults"]["targets"]["iphone"].__setitem__(
        "quality_gate", {"min_top1": 0.9999, "max_mean_kl": 1.0}))
    assert planned_jobs(work, "iphone_bundle") == [f"package[{DEMO},device=iphone]"]
    snakemake(work, "--cores", "2", "iphone_bundle")
    verdict = json.loads((package / "quality-gate.json").read_text())
    report = json.loads((work / "results" / "evaluate" / "demo" / "q4f16_0" / "report.json").read_text())
    assert verdict["passed"] is False and verdict["metrics"]["top1"] == report["top1_agreement"] < 0.9999
    assert [(c["bound_name"], c["passed"]) for c in verdict["checks"]] == [("max_mean_kl", True), ("min_top1", False)]
    assert read_manifest(package)["quality_gate"] == verdict and verify_manifest(package) == []
    card = ModelCard((package / "README.md").read_text(encoding="utf-8"))
    assert {(r.metric_type, r.metric_value) for r in card.data.eval_results} >= {
        ("quality_gate", "fail"), ("top1_agreement", round(report["top1_agreement"], 4))}

    proc = snakemake(work, "--cores", "2", "upload", check=False)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("hf2mlc:")]
    assert lines == [
        f"hf2mlc: rule upload: results/package/demo/iphone: fails its quality gate (top1 "
        f"{report['top1_agreement']:.6g} below min_top1 0.9999); not uploading. Use a better quantization or "
        "method for this device, or relax quality_gate in config/config.yaml."
    ]
    assert not (work / "results" / "upload" / "demo" / "iphone.json").exists()
