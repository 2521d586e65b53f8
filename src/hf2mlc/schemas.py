"""The checked YAML files' schemas, which live as YAML beside each other in config/: ``schema.yaml`` (the
workflow config, which Snakemake's ``validate()`` checks before the DAG is built) and
``family.schema.yaml`` (a model family, which :func:`hf2mlc.families.load_family` checks whenever a stage
or the DAG reads one).

Both are JSON Schema 2020-12 and both are applied by jsonschema's ``Draft202012Validator``: the validator
Snakemake's ``validate()`` uses, so one schema language, read one way, decides what a valid setting is.
A schema is named by its file name as a string constant where it is used, which is how
:mod:`hf2mlc.closure` puts it in the code digest of every rule that reads it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

#: The checkout's config/ (the jobs run this checkout's code: scripts/_adapter.py).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
#: The files of CONFIG_DIR that are schemas (a glob; the rest are the user's settings, which are rule inputs).
SCHEMA_FILES = "*schema.yaml"


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """``config/<name>``, checked against JSON Schema 2020-12's own meta-schema."""
    from jsonschema import Draft202012Validator

    schema = yaml.safe_load((CONFIG_DIR / name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return schema


def check(instance: Any, name: str, *, where: Path, readme: str) -> None:
    """Raise UserError naming ``where``, the first (shallowest) key that breaks schema ``name``, and the
    ``readme`` that explains the keys."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(load_schema(name))
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        error = errors[0]
        raise UserError(f"{where}: {_key_path(error)}: {error.message}. See {readme}.")


def _key_path(error: Any) -> str:
    parts = [f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path]
    return "".join(parts).lstrip(".") or "(top level)"
