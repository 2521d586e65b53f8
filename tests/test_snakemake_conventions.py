"""The Snakemake workflow catalog's conventions, adapted to this workflow's top-level layout: pinned
environments that agree with the README's lock, formatted rules, a catalog entry, test configs and
cluster profiles whose dry runs plan the whole bundle."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_helpers import REPO, copy_workflow, planned_jobs, snakemake

DEMO_PLAN = {
    "download[model=demo]",
    "patch[model=demo]",
    "tokenizer[model=demo]",
}


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[_normal(name)] = version
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_env_pins_the_locked_versions() -> None:
    lock = _lock()
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert envs
    for env in envs:
        deps = yaml.safe_load(env.read_text(encoding="utf-8"))["dependencies"]
        pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
        pins = [p for p in pip if not p.startswith("--")]
        assert pins, env.name
        for pin in pins:
            name, sep, version = pin.partition("==")
            assert sep, f"{env.name}: {pin!r} is not pinned with =="
            assert lock.get(_normal(name)) == version, f"{env.name}: {pin} but requirements.lock has {lock.get(_normal(name))}"
        python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
        assert python == f"python={sys.version_info.major}.{sys.version_info.minor}", env.name


def test_every_rule_has_log_benchmark_conda_and_resources() -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "rules").glob("*.smk")))
    blocks = re.split(r"^rule ", text, flags=re.M)[1:]
    assert len(blocks) >= 8
    for block in blocks:
        name = block.split(":", 1)[0]
        for directive in ("log:", "benchmark:", "conda:", "resources:"):
            assert f"\n    {directive}" in block, f"rule {name} has no {directive}"
    assert 'min_version("' in (REPO / "Snakefile").read_text(encoding="utf-8")


def test_rule_files_are_snakefmt_clean() -> None:
    snakefmt = Path(sys.executable).with_name("snakefmt")
    files = ["Snakefile", *sorted(str(p.relative_to(REPO)) for p in (REPO / "rules").glob("*.smk"))]
    proc = subprocess.run([str(snakefmt), "--check", *files], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_catalog_entry_names_the_deployment_and_report() -> None:
    entry = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text(encoding="utf-8"))["usage"]
    assert entry["software-stack-deployment"]["conda"] is True
    assert entry["report"] is True
    assert (REPO / "config" / "README.md").is_file()
    # The flags it shows run: the named target exists.
    assert f"rule {entry['mandatory-flags']['flags']}:" in (REPO / "Snakefile").read_text(encoding="utf-8")


def _workflow(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path / "wf")


@pytest.mark.parametrize(
    ("configfile", "expected"),
    [
        (".test/config/demo.yaml", DEMO_PLAN | {"package[model=demo,device=iphone]"}),
        (
            ".test/config/demo-iphone-q4f16_1.yaml",
            DEMO_PLAN | {"compile[model=demo,target=iphone,quant=q4f16_1]", "package[model=demo,device=iphone]"},
        ),
        (
            ".test/config/local.yaml",
            {"download[model=demo]", "download[model=localdemo]", "package[model=localdemo,device=iphone]"},
        ),
        (".test/config/hub.yaml", {"download[model=hubdemo]", "upload"}),
    ],
    ids=["demo", "demo-iphone-q4f16_1", "local", "hub"],
)
def test_test_configs_plan_their_bundles(tmp_path: Path, configfile: str, expected: set[str]) -> None:
    work = _workflow(tmp_path)
    target = "upload" if "hub" in configfile else "iphone_bundle"
    jobs = set(planned_jobs(work, target, "--configfile", configfile))  # --configfile takes several files
    assert expected <= jobs, f"planned {sorted(jobs)}"


def test_kubernetes_profile_dry_run(tmp_path: Path) -> None:
    work = _workflow(tmp_path)
    proc = snakemake(work, "--profile", "profiles/kubernetes", "--dry-run", "iphone_bundle")
    text = proc.stdout + proc.stderr
    assert "This was a dry-run" in text
    assert "/mnt/hf2mlc/results/package/demo/iphone (in storage)" in text
