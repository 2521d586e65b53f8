"""Each rule's code digest is computed from the code (hf2mlc.closure): what it must and must not cover.

The end-to-end oracle — every module a real job loaded is in its rule's closure, and editing a deep module
reruns exactly the rules that import it — is in tests/test_workflow.py; these check the reading itself.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hf2mlc.closure import PACKAGE_DIR, rule_files
from workflow_helpers import copy_workflow

REPO = Path(__file__).resolve().parents[1]
RULES = {
    match["rule"]: match["stage"]
    for path in sorted((REPO / "rules").glob("*.smk"))
    for match in re.finditer(r"^rule (?P<rule>\w+):.*?code=code_version\(\"(?P<stage>\w+)\"\)", path.read_text(), re.S | re.M)
}


def _names(stage: str) -> set[str]:
    files = rule_files(stage, REPO)
    return {(p.relative_to(PACKAGE_DIR) if p.is_relative_to(PACKAGE_DIR) else p.relative_to(REPO)).as_posix() for p in files}


def test_every_rule_digests_its_own_stage() -> None:
    assert RULES == {**{name: name for name in ("download", "patch", "convert", "compile", "check", "tokenizer",
                                                "reference", "reference_answers", "evaluate", "package",
                                                "upload", "tables", "plot")},
                     "convert_calibrated": "convert"}  # fmt: skip
    # Calibrated conversion runs the streaming reference and the calibrated quantizers inside convert's stage.
    assert {"quantization/calibrated.py", "quantization/calibration.py", "reference.py", "evaluation_text.py"} <= _names("convert")


@pytest.mark.parametrize("stage", ["download", "patch", "convert", "compile", "check", "tokenizer", "reference",
                                   "reference_answers", "evaluate", "package", "upload"])
def test_every_rule_covers_its_script_the_adapter_and_the_stage_module(stage: str) -> None:
    names = _names(stage)
    assert {f"scripts/{stage}.py", "scripts/_adapter.py", "snakemake_script.py", "stages.py", "__init__.py"} <= names
    # The spec types the adapter builds (and the registry they hold) are in every rule.
    assert {"spec.py", "quantization/__init__.py", "layout.py", "manifest.py", "errors.py"} <= names


def test_lazy_imports_inside_functions_are_followed() -> None:
    # check_host_build imports the streaming reference inside its body, whose cache source imports the packers.
    assert {"check.py", "reference.py", "quantization/group.py", "loader/huggingface.py", "tensor_cache.py",
            "runtime.py", "model/gpt_neox/loader.py"} <= _names("check")
    assert "reference_cache.py" in _names("evaluate")  # the stored reference, imported inside evaluate_build
    assert {"reference.py", "reference_cache.py", "evaluation_text.py", "loader/huggingface.py"} <= _names("reference")


def test_a_rule_does_not_cover_other_stages_code() -> None:
    compile_names = _names("compile")
    assert {"compile.py", "compiler_pass/cpu_schedule.py", "model/gpt_neox/model.py", "quantization/nn.py"} <= compile_names
    assert not {"check.py", "evaluate.py", "quantization/group.py", "tokenizer/stage.py", "package.py", "convert.py"} & compile_names
    # The demo renders prompts with families.render_prompt; validating a family (tokenizer/bundle.py) is patch's.
    download = _names("download")
    assert {"demo.py", "families.py", "sources/fetch.py"} <= download and "tokenizer/bundle.py" not in download
    assert "tokenizer/bundle.py" in _names("patch") and "tokenizer/mlc.py" in _names("package")
    # The tokenizer stage's own gate and converter are the tokenizer rule's alone.
    assert all("tokenizer/stage.py" not in _names(s) for s in ("patch", "check", "evaluate", "package"))


def test_package_data_a_module_names_is_covered() -> None:
    # (The evaluation texts and prompt lists are named by config, not code: they are the rules' watched inputs.)
    assert "data/tokenizer_cases_ja.txt" in _names("tokenizer")
    assert not any(name.startswith("data/") for name in _names("compile"))


def test_unknown_stage_is_refused() -> None:
    with pytest.raises(ValueError, match="no stage function 'build'"):
        rule_files("build", REPO)


def test_rules_that_read_a_family_cover_its_schema_and_rerun_when_it_changes(tmp_path: Path) -> None:
    readers = {"patch", "reference_answers"}  # the stages that call families.load_family
    stages = sorted(set(RULES.values()))
    assert {s for s in stages if "config/family.schema.yaml" in _names(s)} == readers
    assert not any("config/schema.yaml" in _names(s) for s in stages)  # Snakemake checks the config at DAG time

    # An edit of the schema in a copy of the workflow changes exactly the readers' digests.
    work = copy_workflow(tmp_path / "wf")
    digests = (
        f"import json, sys; sys.path.insert(0, {str(work / 'src')!r}); from hf2mlc.closure import code_digest; "
        f"print(json.dumps({{s: code_digest(s, {str(work)!r}) for s in {stages!r}}}))"
    )

    def run() -> dict[str, str]:
        return json.loads(subprocess.run([sys.executable, "-c", digests], check=True, capture_output=True, text=True).stdout)

    before = run()
    schema = work / "config" / "family.schema.yaml"
    schema.write_text(schema.read_text(encoding="utf-8").replace("minLength: 1}", "minLength: 2}", 1), encoding="utf-8")
    after = run()
    assert {s for s in stages if before[s] != after[s]} == readers
