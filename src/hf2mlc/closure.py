"""The code a rule runs, computed from the code: its script and the import closure inside hf2mlc.

Snakemake reruns a job when its rule's script changes, not when a module the script imports does, so each
rule carries a digest of that closure as a parameter (rules/common.smk: ``code_version``). The closure is
read with :mod:`ast`, never listed by hand: every ``import``/``from … import`` of an hf2mlc module anywhere
in a module (inside functions too: the package imports its heavy dependencies lazily) is followed
transitively, with the packages that hold each module (their ``__init__.py`` runs first), and the files of
``hf2mlc/data/`` and the schemas of ``config/`` a module names. Imports under ``if TYPE_CHECKING:`` never
run and are not followed.

The closure is followed by name: ``from .families import render_prompt`` takes the module-level code of
families.py (it runs on import) and the definitions ``render_prompt`` refers to, transitively — not the
lazy imports of families' other functions. So a rule runs :mod:`hf2mlc.stages`' own function only (each
stage imports what it uses in its own body), and the demo, which renders prompts, does not depend on the
tokenizer code that validating a family uses. A whole-module import (``import x``, ``from pkg import
module``) takes every definition.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

from .schemas import CONFIG_DIR, SCHEMA_FILES

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name
DATA_DIR = PACKAGE_DIR / "data"
#: Read per stage function, not whole (see the module docstring).
STAGES = f"{PACKAGE}.stages"
#: The modules every rule's script runs before its stage: the scripts' adapter hands the job over here.
ADAPTER = f"{PACKAGE}.snakemake_script"


def module_path(module: str) -> Path | None:
    """The source file of an hf2mlc module (a package's ``__init__.py``), or None if there is none."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST):
    """ast.walk, without the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        for child in ast.iter_child_nodes(current):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)


ALL = None  # "every definition of the module" (an `import x` or `from pkg import module`)


def _resolve(node: ast.ImportFrom, module: str) -> str:
    path = module_path(module)
    package = module if path is not None and path.name == "__init__.py" else module.rpartition(".")[0]
    if not node.level:
        return node.module or ""
    anchor = package.split(".")
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def _imports(nodes, module: str) -> dict[str, set[str] | None]:
    """hf2mlc modules the import statements among ``nodes`` run, each with the names taken from it
    (:data:`ALL` for the whole module)."""
    found: dict[str, set[str] | None] = {}

    def need(name: str, names: set[str] | None) -> None:
        if module_path(name) is None:
            return
        if names is ALL or (name in found and found[name] is ALL):
            found[name] = ALL
        else:
            found[name] = found.get(name, set()) | names

    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                need(alias.name, ALL)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, module)
            names = {alias.name for alias in node.names}
            need(base, ALL if "*" in names else names)
            for name in names:  # `from pkg import name` may import the submodule pkg.name
                need(f"{base}.{name}", ALL)
    return found


_DEF_TYPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _named_files() -> dict[str, Path]:
    """The files code may name by their file name: hf2mlc/data/'s, and config/'s schemas (hf2mlc.schemas)."""
    files = [p for p in DATA_DIR.iterdir() if p.is_file()] if DATA_DIR.is_dir() else []
    if CONFIG_DIR.is_dir():
        files += [p for p in CONFIG_DIR.iterdir() if p.is_file() and p.match(SCHEMA_FILES)]
    return {p.name: p for p in files}


def _data_files(nodes) -> set[Path]:
    """Package data and schemas that code names by a string constant (e.g. ``DATA / "eval_ja.txt"``,
    ``schemas.check(raw, "family.schema.yaml", …)``)."""
    present = _named_files()
    names = {n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return {present[name] for name in names & set(present)}


def _definitions(tree: ast.Module) -> dict[str, ast.AST]:
    return {node.name: node for node in tree.body if isinstance(node, _DEF_TYPES)}


def _loaded_names(nodes) -> set[str]:
    return {n.id for n in nodes if isinstance(n, ast.Name)}


_Walked = tuple[tuple[ast.AST, ...], frozenset[str]]


@functools.cache
def _walked(module: str) -> tuple[_Walked, dict[str, _Walked]]:
    """``module``'s module-level statements and each of its definitions, walked once per process (with the
    names each loads): a digest follows the same modules for every rule, and every Snakemake start digests
    every rule, so walking them again each time was most of a dry run's time."""
    tree = _tree(module_path(module))

    def walked(statements) -> _Walked:
        nodes = tuple(n for statement in statements for n in _walk(statement))
        return nodes, frozenset(_loaded_names(nodes))

    top = walked(statement for statement in tree.body if statement.__class__ not in _DEF_TYPES)
    return top, {name: walked([node]) for name, node in _definitions(tree).items()}


def _used_nodes(module: str, names: set[str] | None) -> list[ast.AST]:
    """The AST nodes of ``module`` that run when ``names`` of it are used: its module-level statements
    (they run on import) and the definitions named, with every definition of the module those refer to."""
    (top, loaded), defs = _walked(module)
    nodes = list(top)
    wanted = (set(defs) if names is ALL else set(names)) | loaded
    done: set[str] = set()
    while todo := (wanted & set(defs)) - done:
        for name in todo:
            done.add(name)
            body, body_loaded = defs[name]
            nodes.extend(body)
            wanted |= body_loaded
    return nodes


def module_closure(roots: dict[str, set[str] | None]) -> dict[str, set[str] | None]:
    """Every hf2mlc module that using ``roots`` (module → names used, or :data:`ALL`) can run, lazily
    imported ones included, each with the names of it that are used. A module's packages run first."""
    used: dict[str, set[str] | None] = {}
    todo = list(roots.items())
    while todo:
        module, names = todo.pop()
        parts = module.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if module_path(parent) is not None and parent not in used:
                todo.append((parent, set()))
        if module in used:
            before = used[module]
            if before is ALL or (names is not ALL and names <= before):
                continue
            merged = ALL if names is ALL else before | names
        else:
            merged = names
        used[module] = merged
        for name, taken in _imports(_used_nodes(module, merged), module).items():
            # The adapter looks a stage up by name (getattr): which one is a root, never the whole module.
            todo.append((name, set() if name == STAGES else taken))
    return used


def rule_files(stage: str, workflow_dir: Path) -> list[Path]:
    """Every file whose content decides what rule ``stage`` does: its script, the scripts' adapter, the
    hf2mlc modules they run and the package data those name; sorted."""
    scripts = Path(workflow_dir) / "scripts"
    files = {scripts / f"{stage}.py", scripts / "_adapter.py"}
    if stage not in _definitions(_tree(module_path(STAGES))):
        raise ValueError(f"hf2mlc.stages has no stage function {stage!r}")
    # The adapter runs hf2mlc.stages.<stage>: that function (and what it uses), not every stage.
    modules = module_closure({ADAPTER: ALL, STAGES: {stage}})
    for module, names in modules.items():
        path = module_path(module)
        files.add(path)
        files.update(_data_files(_used_nodes(module, names)))
    missing = sorted(str(f) for f in files if not f.is_file())
    if missing:
        raise ValueError(f"rule {stage}: {', '.join(missing)} missing")
    return sorted(files)


def code_digest(stage: str, workflow_dir: Path) -> str:
    """A short digest of :func:`rule_files`' paths (relative to the package) and contents."""
    digest = hashlib.sha256()
    for path in rule_files(stage, workflow_dir):
        digest.update(_relative(path, Path(workflow_dir)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _relative(path: Path, workflow_dir: Path) -> str:
    """A path that names the file the same way in every checkout."""
    for base in (PACKAGE_DIR.parent, Path(workflow_dir).resolve()):
        try:
            return path.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            continue
    return path.name
