"""One function per workflow stage: plain arguments in, one finished output directory out.

Each stage writes into a temporary sibling of its output and renames it into place only when everything
(including ``manifest.json``) is written, so an interrupted run leaves nothing that looks complete. The
Snakemake scripts in ``scripts/`` only unpack ``snakemake.input/params/output`` and call these; the
``hf2mlc`` command line calls them too.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .errors import UserError
from .manifest import Stopwatch, atomic_output_dir, read_manifest, write_json, write_manifest

log = logging.getLogger(__name__)


def download(*, source: str, out_dir: str | os.PathLike[str], base_dir: str | os.PathLike[str] = ".") -> None:
    """The model as a Hugging Face directory with a manifest: from the Hub, a local directory, or the demo."""
    from . import hub

    parsed = hub.parse_source(source, base_dir=Path(base_dir))
    if parsed.kind != "demo":
        hub.download(parsed, Path(out_dir))
        return
    from .demo import make_demo_model

    watch = Stopwatch()
    with atomic_output_dir(out_dir) as tmp:
        with watch("make_demo_model"):
            stats = make_demo_model(tmp)
        # Phase timings go with the manifest's timings; the rest of the stats is the same every run.
        watch.timings.update({f"demo_{k}": v for k, v in stats.pop("timings", {}).items()})
        write_manifest(
            tmp,
            stage="download",
            params={"source": "demo"},
            timings=watch.timings,
            extra={"source": {"kind": "demo"}, "demo": _json_safe(stats)},
        )


def patch(*, model_dir: str | os.PathLike[str], family_file: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> None:
    """Validate the family's conversation template against the model's tokenizer and emit MLC's object."""
    from . import families

    watch = Stopwatch()
    with watch("validate"):
        family = families.load_family(Path(family_file))
        report = families.validate_family(family, Path(model_dir))
        template = families.conv_template(family)
    with atomic_output_dir(out_dir) as tmp:
        write_json(tmp / "conv_template.json", template)
        write_json(tmp / "validation-report.json", report)
        write_json(tmp / "overrides.json", {
            "overrides": dict(getattr(family, "overrides", {}) or {}),
            "generation": dict(getattr(family, "generation", {}) or {}),
        })
        write_manifest(
            tmp,
            stage="patch",
            inputs={"model": model_dir, "family": family_file},
            params={"family": Path(family_file).stem},
            timings=watch.timings,
        )


def convert(
    *, model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], quantization: str, ffn_out_dtype: str
) -> None:
    """Quantized, sharded weights in MLC's tensor-cache format."""
    from .convert import convert_weights

    watch = Stopwatch()
    with atomic_output_dir(out_dir) as tmp:
        with watch("convert"):
            stats = convert_weights(Path(model_dir), tmp, quantization, ffn_out_dtype=ffn_out_dtype)
        watch.timings["convert_weights"] = float(stats.pop("seconds", 0.0))
        write_manifest(
            tmp,
            stage="convert",
            inputs={"model": model_dir},
            params={"quantization": quantization, "ffn_out_dtype": ffn_out_dtype},
            timings=watch.timings,
            resources={"peak_rss_mb": stats.pop("peak_rss_mb", 0.0)},
            extra={"stats": _json_safe(stats)},
        )


def build(
    *,
    model_dir: str | os.PathLike[str],
    weights_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    target: str,
    quantization: str,
    lib_name: str,
    context_window_size: int,
    prefill_chunk_size: int,
    ffn_out_dtype: str,
    max_logit_rel_error: float,
) -> None:
    """The model library for one target; a host library is also run and checked against transformers."""
    from .compile import compile_model
    from .model.config import GPTNeoXConfig

    config = GPTNeoXConfig.from_file(Path(model_dir))
    watch = Stopwatch()
    params = {
        "target": target,
        "quantization": quantization,
        "lib_name": lib_name,
        "context_window_size": context_window_size,
        "prefill_chunk_size": prefill_chunk_size,
        "ffn_out_dtype": ffn_out_dtype,
    }
    with atomic_output_dir(out_dir) as tmp:
        with watch("compile"):
            info = compile_model(
                config,
                quantization,
                target,
                tmp,
                lib_name=lib_name,
                context_window_size=context_window_size,
                prefill_chunk_size=prefill_chunk_size,
                ffn_out_dtype=ffn_out_dtype,
            )
        # Wall time belongs to the manifest's timings: lib-info.json must be the same bytes every build.
        watch.timings["compile_model"] = float(info.pop("seconds", 0.0))
        write_json(tmp / "lib-info.json", _json_safe(info))
        if target == "host":
            from .evaluate import check_host_build

            params["max_logit_rel_error"] = max_logit_rel_error
            with watch("check"):
                report = check_host_build(
                    Path(model_dir), Path(weights_dir), tmp / f"{lib_name}.so", quantization,
                    max_rel_error=max_logit_rel_error,
                )
            write_json(tmp / "check.json", report)
        write_manifest(
            tmp,
            stage="build",
            inputs={"model": model_dir, "weights": weights_dir},
            params=params,
            timings=watch.timings,
        )


def tokenizer(*, model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> None:
    """tokenizer.json from spiece.model, with a 100 % parity report against SentencePiece."""
    from .tokenizer import build_tokenizer

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


def reference(
    *,
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    family_files: dict[str, str | os.PathLike[str]],
    text: str,
    max_tokens: int,
    max_len: int,
    prompts: str,
    answer_tokens: int,
) -> None:
    """The float32 reference of the model on its evaluation text and chat prompts (rule reference)."""
    from . import families
    from .evaluation_text import chat_prompts, load_evaluation_text, load_prompts, load_tokenizer
    from .convert import peak_rss_mb
    from .manifest import input_digest
    from .reference_cache import build_reference

    model_dir = Path(model_dir)
    watch = Stopwatch()
    evaluation_text = load_evaluation_text(model_dir, text, max_tokens=max_tokens, max_len=max_len)
    templates = {name: families.conv_template(families.load_family(Path(path))) for name, path in family_files.items()}
    own_family = families.load_family(Path(next(iter(family_files.values()))))
    messages = [content for role, content in own_family.example_messages if role == "user"]
    messages += [m for m in load_prompts(prompts) if m not in messages]
    rendered = chat_prompts(templates, messages, load_tokenizer(model_dir).encode)
    model_digest = input_digest(model_dir)
    with atomic_output_dir(out_dir) as tmp:
        with watch("reference"):
            summary = build_reference(
                model_dir, tmp, evaluation_text, rendered, answer_tokens=answer_tokens, model_digest=model_digest
            )
        watch.timings.update({f"reference_{k}": v for k, v in summary.pop("seconds").items()})
        write_manifest(
            tmp,
            stage="reference",
            inputs={"model": model_dir, **{f"family_{name}": path for name, path in family_files.items()}},
            params={"text": text, "max_tokens": max_tokens, "max_len": max_len, "prompts": prompts,
                    "answer_tokens": answer_tokens, "templates": sorted(family_files)},
            timings=watch.timings,
            resources={"peak_rss_mb": peak_rss_mb()},
            extra={"text": summary["text"], "model": summary["model"]},
        )


def evaluate(
    *,
    model_dir: str | os.PathLike[str],
    weights_dir: str | os.PathLike[str],
    build_dir: str | os.PathLike[str],
    reference_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    quantization: str,
) -> None:
    """Perplexity (with interval), KL, agreement and greedy answers of the host build against the reference."""
    from .evaluate import evaluate_build
    from .convert import peak_rss_mb

    info = json.loads((Path(build_dir) / "lib-info.json").read_text(encoding="utf-8"))
    libs = [name for name in info["files"] if name.endswith(".so")]
    if not libs:
        raise UserError(f"{build_dir}: no host library (.so) listed in lib-info.json; rebuild the host target.")
    lib = Path(build_dir) / libs[0]
    watch = Stopwatch()
    with atomic_output_dir(out_dir) as tmp:
        with watch("evaluate"):
            evaluate_build(Path(model_dir), Path(weights_dir), lib, quantization, Path(reference_dir), tmp)
        write_manifest(
            tmp,
            stage="evaluate",
            inputs={"model": model_dir, "weights": weights_dir, "build": build_dir, "reference": reference_dir},
            params={"quantization": quantization},
            timings=watch.timings,
            resources={"peak_rss_mb": peak_rss_mb()},
        )


def package(*, inputs: dict[str, str], out_dir: str | os.PathLike[str], settings: dict[str, Any], versions_log: str | os.PathLike[str] | None = None) -> None:
    """The bundle in MLC LLM's layout, with its model card; records its version in results/versions.jsonl."""
    from .package import make_package

    watch = Stopwatch()
    with atomic_output_dir(out_dir) as tmp:
        with watch("package"):
            make_package({k: Path(v) for k, v in inputs.items()}, tmp, settings)
        from .gate import read_verdict

        manifest = write_manifest(
            tmp,
            stage="package",
            inputs=inputs,
            params=settings,
            timings=watch.timings,
            extra={"quality_gate": read_verdict(tmp)},
        )
    if versions_log is not None:
        from .package import record_version

        record_version(Path(versions_log), manifest, settings)


def upload(*, records: dict[str, dict[str, Any]], enabled: bool, private: bool) -> None:
    """Publish each bundle (record path → {package, repo}); write what was (or would be) sent."""
    from . import hub
    from .gate import require_pass
    from .package import hub_folder

    for job in records.values():  # every bundle is checked before any is sent
        require_pass(Path(job["package"]))
    for record_path, job in records.items():
        package_dir = Path(job["package"])
        with hub_folder(package_dir) as folder:
            record = hub.upload(folder, repo_id=job["repo"], private=private, enabled=enabled,
                                version_id=read_manifest(package_dir)["version_id"])
        Path(record_path).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(record_path), _json_safe(record))


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
