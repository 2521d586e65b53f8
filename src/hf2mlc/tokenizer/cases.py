"""The parity test set: a case file the project owns, one JSON string per line, in named sections."""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import re
from pathlib import Path

from ..errors import UserError


#: The project's own test set, in the package data.
DEFAULT_CASES = "tokenizer_cases_ja.txt"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    text: str


def default_cases_path() -> Path:
    return Path(str(importlib.resources.files("hf2mlc") / "data" / DEFAULT_CASES))


def load_cases(path: Path) -> list[Case]:
    """Read a case file: ``# section: NAME`` comments name sections, every other non-blank line is one
    case written as a JSON string (so newlines, tabs and edge spaces are explicit escapes)."""
    path = Path(path)
    try:
        # "\n" only: str.splitlines() would also break at U+2028 and friends inside a case.
        lines = [line.rstrip("\r") for line in path.read_text(encoding="utf-8").split("\n")]
    except OSError as err:
        raise UserError(f"{path}: cannot read the tokenizer test cases ({err.strerror}).") from err
    cases: list[Case] = []
    section = "cases"
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            match = re.match(r"#\s*section:\s*(\S+)", stripped)
            if match:
                section = match.group(1)
            continue
        try:
            text = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{number}: a case must be one JSON string per line ({err}).") from err
        if not isinstance(text, str):
            raise UserError(f"{path}:{number}: a case must be a JSON string, got {type(text).__name__}.")
        cases.append(Case(f"{path.name}:{number} [{section}]", text))
    if not cases:
        raise UserError(f"{path}: no test cases.")
    return cases
