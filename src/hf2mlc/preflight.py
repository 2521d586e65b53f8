"""Checks that fail in the first second instead of after minutes of builds: settings and checkpoints.

Run when Snakemake builds the DAG (rules/common.smk) for everything known by then: the names that
become Hub repos and model libraries, their uniqueness across models, each target's chunk against its
context window, and, where the checkpoint is already on disk (a local source, an earlier download),
its config.json against its own tensor headers and the memory each stage will need against this
machine's.  A Hub source's checkpoint arrives later, so the download stage runs the same checkpoint
checks before it declares the download complete, and the heavy stages check memory again when they start.

A checkpoint's size is checked from the safetensors headers (a few kilobytes) before anything is
allocated: ``num_hidden_layers: 10000000`` otherwise ran for minutes until the kernel's OOM killer
ended it at 23 GB, with no message at all.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .errors import UserError
from .faults import explain_os_error
from .model.gpt_neox.config import GPTNeoXConfig

log = logging.getLogger(__name__)

GiB = 1 << 30


def check_hub_name(name: str, *, where: str) -> None:
    """A bundle name must be usable as a Hub repo name (it names the bundle's repo and model library)."""
    try:
        validate_repo_id(f"owner/{name}")
    except HFValidationError as err:
        raise UserError(
            f"{where}: name {name!r} cannot be a Hugging Face repo name ({err}); use letters, digits, '-', '_' "
            "and single '.' (no '..', no leading or trailing '-' or '.'), at most 96 characters."
        ) from None


def check_repo_id(repo_id: str, *, where: str) -> None:
    if repo_id.count("/") != 1:
        raise UserError(f"{where}: {repo_id!r} is not owner/name; fix upload.repo in config/config.yaml.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UserError(f"{where}: {repo_id!r} is not a valid Hugging Face repo id ({err}); fix upload.repo or the name.") from None


def check_unique(owners: Mapping[str, Iterable[str]], *, what: str) -> None:
    """Refuse two models that would produce the same ``what`` (a bundle, a model library, a Hub repo)."""
    seen: dict[str, str] = {}
    for model, values in owners.items():
        for value in values:
            if value in seen and seen[value] != model:
                raise UserError(
                    f"config/config.yaml: models {seen[value]} and {model} both make {what} {value!r}, so one would "
                    "overwrite the other; give them different `name`s."
                )
            seen[value] = model


def check_chunk(context_window_size: int, prefill_chunk_size: int, *, where: str) -> None:
    if prefill_chunk_size > context_window_size:
        raise UserError(
            f"{where}: prefill_chunk_size {prefill_chunk_size} is larger than context_window_size "
            f"{context_window_size}; a chunk cannot exceed the window. Set prefill_chunk_size ≤ {context_window_size}."
        )


def checkpoint_tensors(model_dir: Path) -> tuple[int, list[Path]] | None:
    """(parameter count, files) from the safetensors headers, or ``None`` for a PyTorch checkpoint (whose
    sizes cannot be read without unpickling)."""
    from .loader.huggingface import find_weight_files, read_safetensors_header
    from .model.gpt_neox.loader import is_dropped

    fmt, files = find_weight_files(model_dir)
    if fmt != "safetensors":
        return None
    total = 0
    for path in files:
        for info in read_safetensors_header(path):
            if not is_dropped(info.stored_name):
                total += info.size
    return total, files


def check_checkpoint(model_dir: Path, *, where: str) -> tuple[GPTNeoXConfig, int]:
    """config.json valid and consistent with the tensors on disk; returns (config, parameters stored)."""
    from .model.gpt_neox.params import checkpoint_parameter_count

    model_dir = Path(model_dir)
    config = GPTNeoXConfig.from_file(model_dir)
    expected = checkpoint_parameter_count(config)
    found = checkpoint_tensors(model_dir)
    if found is None:
        return config, expected
    total, files = found
    tied_copy = config.vocab_size * config.hidden_size if config.tie_word_embeddings else 0
    if total not in (expected, expected + tied_copy):
        names = ", ".join(p.name for p in files[:3]) + (" …" if len(files) > 3 else "")
        raise UserError(
            f"{where}: {model_dir / 'config.json'} describes {expected:,} parameters (num_hidden_layers "
            f"{config.num_hidden_layers}, hidden_size {config.hidden_size}, intermediate_size "
            f"{config.intermediate_size}, vocab_size {config.vocab_size}), but the tensor headers of {names} hold "
            f"{total:,}; config.json does not belong to these weights. Restore the model's own config.json."
        )
    return config, expected


def machine_memory_bytes() -> tuple[int, int] | None:
    """(total, available) memory plus swap from /proc/meminfo (Linux); ``None`` where it cannot be read."""
    try:
        fields = {
            key: int(value.split()[0]) * 1024
            for key, value in (line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        }
        return (fields["MemTotal"] + fields.get("SwapTotal", 0), fields["MemAvailable"] + fields.get("SwapFree", 0))
    except (OSError, KeyError, ValueError, IndexError):
        return None


def check_memory(params: int, *, where: str, stages: Iterable[str] | None = None,
                 memory: tuple[int, int] | None = None) -> None:
    """Refuse a stage whose memory request (:func:`hf2mlc.resources.mem_mb`, what a scheduler is asked
    for) exceeds the machine's memory; warn when it exceeds what is free. ``params``: the library's
    parameter count (:func:`hf2mlc.model.gpt_neox.params.parameter_count`).

    The request is the measured peak plus headroom, so only a model that cannot fit this machine at all is
    refused; one that needs memory now in use by others is a warning.
    """
    from .resources import MODEL_SIZED_RULES, mem_mb

    memory = machine_memory_bytes() if memory is None else memory
    if memory is None:
        return
    total, available = memory
    for stage in MODEL_SIZED_RULES:
        if stages is not None and stage not in stages:
            continue
        need = mem_mb(stage, params) * 10**6
        if need > total:
            raise UserError(
                f"{where}: stage {stage} needs about {need / GiB:.1f} GiB for {params:,} parameters, but this machine "
                f"has {total / GiB:.1f} GiB of memory and swap; run it on a machine with more memory."
            )
        if need > available:
            log.warning("%s: stage %s needs about %.1f GiB, but only %.1f GiB are free now; it may be killed for "
                        "memory if other programs keep theirs", where, stage, need / GiB, available / GiB)


def check_model_dir(model_dir: Path, *, where: str, stages: Iterable[str] | None = None) -> GPTNeoXConfig:
    """Every check of a checkpoint on disk: config.json types and ranges, size against headers, memory."""
    from .model.gpt_neox.params import parameter_count

    config, _stored = check_checkpoint(model_dir, where=where)
    check_memory(parameter_count(config), where=where, stages=stages)
    return config


def check_stage_inputs(stage: str, arguments: Mapping[str, Any], *, reads_whole: Iterable[str] = ()) -> None:
    """Before a stage runs: every stage output it takes matches its manifest, and a checkpoint it takes
    (``model_dir``) passes the checks a Hub source could not get at DAG-build time."""
    from .manifest import MANIFEST_NAME, verify_inputs

    whole = set(reads_whole)
    for name, value in arguments.items():
        if name == "out_dir" or not (name.endswith("_dir") or name == "packages"):
            continue
        for path in value if isinstance(value, list) else [value]:
            if path is not None and (Path(path) / MANIFEST_NAME).is_file():
                verify_inputs(path, whole=name in whole)
    if arguments.get("model_dir") is not None:
        check_model_dir(Path(arguments["model_dir"]), where=f"rule {stage}", stages=(stage,))


def check_writable(results: Path) -> None:
    """Refuse a results/ (or a stage directory in it) that cannot be written: read-only, immutable, no
    permission.  Snakemake would otherwise stop at the first job with its own multi-line WorkflowError."""
    results = Path(results)
    directories = [results, *sorted(p for p in results.iterdir() if p.is_dir())] if results.is_dir() else [results.parent]
    for directory in directories:
        try:
            fd, name = tempfile.mkstemp(prefix=".hf2mlc-write-check-", dir=directory)
            os.close(fd)
            os.unlink(name)
        except OSError as err:
            user = explain_os_error(OSError(err.errno, err.strerror), output=directory)
            if user is None:
                raise
            raise user from None


def check_workflow(models: Iterable[Mapping[str, Any]]) -> None:
    """The DAG-time checks over every enabled model.

    Each model is a mapping with ``id``, ``name``, ``targets`` ({target: {context_window_size,
    prefill_chunk_size}}), ``bundles``, ``model_libs``, ``hub_repos`` (lists of what it will make) and
    ``checkpoint`` (a directory holding its checkpoint already, or ``None``).
    """
    models = list(models)
    for model in models:
        where = f"config/config.yaml: models[{model['id']}]"
        check_hub_name(model["name"], where=where)
        for target, settings in model["targets"].items():
            check_chunk(settings["context_window_size"], settings["prefill_chunk_size"], where=f"{where}.targets.{target}")
        for repo in model["hub_repos"]:
            check_repo_id(repo, where=f"{where}: upload.repo")
    for key, what in (("bundles", "bundle"), ("model_libs", "model library"), ("hub_repos", "Hub repo")):
        check_unique({m["id"]: m[key] for m in models}, what=what)
    for model in models:
        checkpoint = model.get("checkpoint")
        if checkpoint is not None and (Path(checkpoint) / "config.json").is_file():
            check_model_dir(Path(checkpoint), where=f"models[{model['id']}]")
