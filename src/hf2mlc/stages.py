"""One function per workflow stage: plain arguments in, one finished output directory out.

Each stage writes into a temporary sibling of its output and renames it into place only when everything
(including ``manifest.json``) is written, so an interrupted run leaves nothing that looks complete. A
stage's keyword arguments are its rule's input, output and params names: the Snakemake scripts hand them
over through one adapter (:mod:`hf2mlc.snakemake_script`), and the ``hf2mlc`` command line calls them too.
A stage imports what it uses inside its own body, so each rule's code digest (:mod:`hf2mlc.closure`)
covers only the code that rule runs.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from . import layout
from .errors import UserError
from .manifest import Stopwatch, atomic_output_dir, read_manifest, write_json, write_manifest
from .spec import RTN, CalibrationSpec, PackageSpec, TargetSpec, WeightSpec

log = logging.getLogger(__name__)
#: A path argument, as Snakemake (str) or a caller (Path) gives it.
StrPath = str | os.PathLike[str]
#: The inputs each stage reads whole, so their sha256 is checked against the producer's manifest before
#: the stage starts (the page cache makes the stage's own read nearly free then); of the others only sizes
#: and small files are (hf2mlc.manifest.verify_inputs).
READS_WHOLE: dict[str, tuple[str, ...]] = {
    "convert": ("model_dir",),
    "check": ("model_dir", "weights_dir", "compile_dir"),
    "evaluate": ("model_dir", "weights_dir", "compile_dir"),
    "package": ("patch_dir", "tokenizer_dir", "compile_dir", "evaluate_dir"),
    "upload": ("packages",),
}


def download(*, source: str, out_dir: StrPath, base_dir: StrPath = ".") -> None:
    """The model as a Hugging Face directory with a manifest: from the Hub, a local directory, or the demo."""
    from . import sources

    parsed = sources.parse_source(source, base_dir=Path(base_dir))
    if parsed.kind != "demo":
        sources.download(parsed, Path(out_dir))
        return
    from .demo import make_demo_model

    watch = Stopwatch()
    with atomic_output_dir(out_dir) as tmp:
        with watch("make_demo_model"):
            stats = make_demo_model(tmp, variant=parsed.variant)
        # Phase timings go with the manifest's timings; the rest of the stats is the same every run.
        watch.timings.update({f"demo_{k}": v for k, v in stats.pop("timings", {}).items()})
        write_manifest(
            tmp,
            stage="download",
            params={"source": parsed.uri},
            timings=watch.timings,
            extra={"source": {"kind": "demo", **({"variant": parsed.variant} if parsed.variant else {})}, "demo": _json_safe(stats)},
        )


def patch(*, model_dir: StrPath, family_file: StrPath, out_dir: StrPath) -> None:
    """Validate the family's conversation template against the model's tokenizer and emit MLC's object."""
    from . import families

    watch = Stopwatch()
    with watch("validate"):
        family = families.load_family(Path(family_file))
        report = families.validate_family(family, Path(model_dir))
        template = families.conv_template(family)
    with atomic_output_dir(out_dir) as tmp:
        write_json(tmp / layout.CONV_TEMPLATE, template)
        write_json(tmp / layout.VALIDATION_REPORT, report)
        write_json(tmp / layout.OVERRIDES, {"overrides": dict(family.overrides), "generation": dict(family.generation)})
        write_manifest(
            tmp,
            stage="patch",
            inputs={"model": model_dir, "family": family_file},
            params={"family": Path(family_file).stem},
            timings=watch.timings,
        )


def convert(*, model_dir: StrPath, out_dir: StrPath, spec: WeightSpec, calibration: CalibrationSpec = RTN) -> None:
    """Quantized, sharded weights in MLC's tensor-cache format, codes chosen by ``calibration.method``."""
    from .convert import convert_weights

    watch = Stopwatch()
    with atomic_output_dir(out_dir) as tmp:
        with watch("convert"):
            stats = convert_weights(
                Path(model_dir), tmp, spec.quantization.name, ffn_out_dtype=spec.ffn_out_dtype,
                method=calibration.method.name, calibration_text=calibration.text,
                calibration_tokens=calibration.tokens, evaluation_text=calibration.evaluation_text,
            )
        watch.timings["convert_weights"] = float(stats.pop("seconds", 0.0))
        write_manifest(
            tmp,
            stage="convert",
            inputs={"model": model_dir},
            params={**spec.as_params(), **calibration.as_params()},
            timings=watch.timings,
            resources={"peak_rss_mb": stats.pop("peak_rss_mb", 0.0)},
            extra={"stats": _json_safe(stats)},
        )


def compile(*, model_dir: StrPath, out_dir: StrPath, spec: TargetSpec) -> None:
    """The model library for one target, with lib-info.json: its files and its own metadata. No weights:
    the library takes them at run time, so it depends only on the model's config.json and the spec."""
    from .compile import compile_model
    from .model.gpt_neox.config import GPTNeoXConfig

    config = GPTNeoXConfig.from_file(Path(model_dir))
    watch = Stopwatch()
    with atomic_output_dir(out_dir) as tmp:
        with watch("compile"):
            info = compile_model(config, spec, tmp)
        # Wall time belongs to the manifest's timings: lib-info.json must be the same bytes every build.
        watch.timings["compile_model"] = float(info.pop("seconds", 0.0))
        write_json(tmp / layout.LIB_INFO, _json_safe(info))
        write_manifest(
            tmp,
            stage="compile",
            inputs={"model": model_dir},
            params=spec.as_params(),
            timings=watch.timings,
        )


def check(
    *, model_dir: StrPath, weights_dir: StrPath, compile_dir: StrPath, out_dir: StrPath,
    quantization: str, evaluation_text: str, max_logit_rel_error: float,
) -> None:
    """The host library run against transformers on its own weights: check.json, or a clear failure."""
    from .check import check_host_build

    lib = host_library(compile_dir)
    watch = Stopwatch()
    with watch("check"):
        report = check_host_build(
            Path(model_dir), Path(weights_dir), lib, quantization,
            evaluation_text=evaluation_text, max_rel_error=max_logit_rel_error,
        )
    with atomic_output_dir(out_dir) as tmp:
        write_json(tmp / layout.CHECK_REPORT, report)
        write_manifest(
            tmp,
            stage="check",
            inputs={"model": model_dir, "weights": weights_dir, "compile": compile_dir},
            params={
                "quantization": quantization,
                "evaluation_text": evaluation_text,
                "max_logit_rel_error": max_logit_rel_error,
            },
            timings=watch.timings,
        )


def host_library(compile_dir: StrPath) -> Path:
    """The host library (.so) a compile output holds, as its lib-info.json lists it."""
    info = json.loads((Path(compile_dir) / layout.LIB_INFO).read_text(encoding="utf-8"))
    libs = [name for name in info["files"] if name.endswith(".so")]
    if not libs:
        raise UserError(f"{compile_dir}: no host library (.so) listed in {layout.LIB_INFO}; recompile the host target.")
    return Path(compile_dir) / libs[0]


def tokenizer(*, model_dir: StrPath, out_dir: StrPath) -> None:
    """The bundle's tokenizer files (spiece.model as tokenizer.model, or the model's tokenizer.json), with a 100 % parity report."""
    from .tokenizer.stage import build_tokenizer

    watch = Stopwatch()
    with atomic_output_dir(out_dir) as tmp:
        with watch("build_tokenizer"):
            report = build_tokenizer(Path(model_dir), tmp)
        write_manifest(
            tmp,
            stage="tokenizer",
            inputs={"model": model_dir},
            timings=watch.timings,
            extra={"parity": _json_safe({k: v for k, v in report.items() if not isinstance(v, list)})},
        )


def reference(*, model_dir: StrPath, out_dir: StrPath, text: str, max_tokens: int, max_len: int) -> None:
    """The float32 reference of the model on its evaluation text (rule reference), once per model and text."""
    from .convert import peak_rss_mb
    from .evaluation_text import load_evaluation_text
    from .manifest import input_digest
    from .reference_cache import build_reference

    model_dir = Path(model_dir)
    watch = Stopwatch()
    evaluation_text = load_evaluation_text(model_dir, text, max_tokens=max_tokens, max_len=max_len)
    with atomic_output_dir(out_dir) as tmp:
        with watch("reference"):
            summary = build_reference(model_dir, tmp, evaluation_text, model_digest=input_digest(model_dir))
        write_manifest(
            tmp,
            stage="reference",
            inputs={"model": model_dir},
            params={"text": text, "max_tokens": max_tokens, "max_len": max_len},
            timings=watch.timings,
            resources={"peak_rss_mb": peak_rss_mb()},
            extra={"text": summary["text"], "model": summary["model"]},
        )


def reference_answers(
    *, model_dir: StrPath, out_dir: StrPath, family_files: list[str], prompts: str, answer_tokens: int
) -> None:
    """The reference's greedy answers to the chat prompts under each family file's template (the model's
    own first), keyed by file name (``line``, ``seed-compat``)."""
    from . import families
    from .convert import peak_rss_mb
    from .evaluation_text import chat_prompts, load_prompts, load_tokenizer
    from .reference_cache import build_answers

    model_dir = Path(model_dir)
    watch = Stopwatch()
    loaded = {Path(path).stem: families.load_family(Path(path)) for path in family_files}
    own = next(iter(loaded.values()))
    messages = [content for role, content in own.example_messages if role == "user"]
    messages += [m for m in load_prompts(prompts) if m not in messages]
    templates = {name: families.conv_template(family) for name, family in loaded.items()}
    rendered = chat_prompts(templates, messages, load_tokenizer(model_dir).encode)
    with atomic_output_dir(out_dir) as tmp:
        with watch("answers"):
            build_answers(model_dir, tmp, rendered, answer_tokens=answer_tokens)
        write_manifest(
            tmp,
            stage="reference_answers",
            inputs={"model": model_dir, **{f"family_{Path(path).stem}": path for path in family_files}},
            params={"prompts": prompts, "answer_tokens": answer_tokens, "templates": list(loaded)},
            timings=watch.timings,
            resources={"peak_rss_mb": peak_rss_mb()},
        )


def evaluate(
    *, model_dir: StrPath, weights_dir: StrPath, compile_dir: StrPath, check_dir: StrPath, reference_dir: StrPath,
    answers_dir: StrPath, out_dir: StrPath, quantization: str,
) -> None:
    """Perplexity (with interval), KL, agreement and greedy answers of the (checked) host build against the
    stored float32 reference."""
    from .convert import peak_rss_mb
    from .evaluate import evaluate_build

    lib = host_library(compile_dir)
    watch = Stopwatch()
    with atomic_output_dir(out_dir) as tmp:
        with watch("evaluate"):
            evaluate_build(Path(model_dir), Path(weights_dir), lib, quantization, Path(reference_dir), Path(answers_dir), tmp)
        write_manifest(
            tmp,
            stage="evaluate",
            inputs={"model": model_dir, "weights": weights_dir, "compile": compile_dir, "check": check_dir,
                    "reference": reference_dir, "answers": answers_dir},
            params={"quantization": quantization},
            timings=watch.timings,
            resources={"peak_rss_mb": peak_rss_mb()},
        )


def package(
    *, model_dir: StrPath, patch_dir: StrPath, tokenizer_dir: StrPath, weights_dir: StrPath, compile_dir: StrPath,
    evaluate_dir: StrPath, out_dir: StrPath, spec: PackageSpec, model: str | None = None,
    versions_log: StrPath | None = None,
) -> None:
    """The bundle in MLC LLM's layout, with its model card; kept in the version store (results/versions/)
    and recorded in results/versions.jsonl, so a later failing rerun cannot lose it."""
    from .gate import read_verdict
    from .package import PackageInputs, make_package

    inputs = PackageInputs(
        model=Path(model_dir),
        patch=Path(patch_dir),
        tokenizer=Path(tokenizer_dir),
        weights=Path(weights_dir),
        library=Path(compile_dir),
        evaluate=Path(evaluate_dir),
    )
    watch = Stopwatch()
    with atomic_output_dir(out_dir) as tmp:
        with watch("package"):
            make_package(inputs, tmp, spec)
        write_manifest(
            tmp,
            stage="package",
            inputs=inputs.as_roles(),
            params=spec.as_params(),
            timings=watch.timings,
            extra={"quality_gate": read_verdict(tmp)},
        )
    if versions_log is not None and model is not None:
        from .versions import store

        store(Path(out_dir), versions_log=Path(versions_log), model=model, device=spec.device, settings=spec.as_params())


def upload(*, packages: list[str], records: list[str], repos: dict[str, str], enabled: bool, private: bool) -> None:
    """Publish each bundle (``packages[i]`` to ``repos[records[i]]``); write what was (or would be) sent
    to ``records[i]``."""
    from . import hub
    from .gate import require_pass
    from .package import hub_folder

    for package_path in packages:  # every bundle is checked before any is sent
        require_pass(Path(package_path))
    for record_path, package_path in zip(records, packages, strict=True):
        package_dir = Path(package_path)
        with hub_folder(package_dir) as folder:
            record = hub.upload(folder, repo_id=repos[record_path], private=private, enabled=enabled,
                                version_id=read_manifest(package_dir)["version_id"])
        Path(record_path).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(record_path), _json_safe(record))


def tables(
    *,
    summary: StrPath,
    quality: StrPath,
    reports: dict[str, str],
    bundles: dict[str, dict[str, str]],
    benchmarks: StrPath,
    own_benchmark: StrPath,
) -> None:
    """The run's job table and quality table (hf2mlc.summary), from the benchmark files under
    ``benchmarks`` (less this job's own) and the evaluation reports."""
    from .summary import write_tables

    write_tables(benchmarks_dir=benchmarks, reports=reports, bundles=bundles, summary_tsv=summary,
                 quality_tsv=quality, exclude=[own_benchmark])


def plot(*, name: str, summary: StrPath, quality: StrPath, png: StrPath) -> None:
    """One of the report's plots (hf2mlc.plots), drawn from the tables."""
    from .plots import draw, read_tables

    draw(name, read_tables(summary, quality), png)


def _json_safe(value: Any) -> Any:
    """Make stats JSON-serialisable (paths → str, numpy scalars → Python numbers)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return value.as_posix()
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value
