"""The tokenizer stage: the tokenizer files a bundle ships, proved on the test set; refused when any case differs.

A SentencePiece model is shipped as ``tokenizer.model`` — MLC's runtime then tokenizes with SentencePiece
itself, exact by construction — and the converted tokenizer.json is measured beside it (written, checked,
reported, not shipped): on real text it disagrees with SentencePiece on near-ties of float32 vs float64
lattice arithmetic, equal-score cuts of repeated-symbol runs, and what NFKC or its lattice cannot express
(README, "Tokenizers").  A model that
ships only a tokenizer.json is validated against its config and shipped as it is.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..layout import PARITY_REPORT
from ..manifest import write_json
from . import hf_json
from .bundle import bundle_tokenizer, load_sentencepiece, model_tokenizer_file
from .cases import Case, default_cases_path, load_cases
from .convert import convert_sentencepiece, tokenizer_config
from .mlc import mlc_tokenizer_fields
from .names import SPIECE_NAME, TOKENIZER_CONFIG, TOKENIZER_JSON, TOKENIZER_MODEL
from .normalizer import NormalizerPlan
from .parity import check_parity, check_shipped, normalizer_sweep, transformers_slow_tokenizer
from .proto import BYTE, USER_DEFINED, SentencePieceModel, read_sentencepiece
from .special_tokens import declared_special_tokens


def _progress(message: str) -> None:
    print(f"[hf2mlc tokenizer] {message}", file=sys.stderr, flush=True)


def find_spiece(model_dir: Path) -> Path:
    for name in (SPIECE_NAME, TOKENIZER_MODEL):
        if (model_dir / name).is_file():
            return model_dir / name
    raise UserError(
        f"{model_dir}: no {SPIECE_NAME} (or {TOKENIZER_MODEL}): this step needs the model's SentencePiece model."
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _describe(sp: SentencePieceModel, declared: dict[str, str]) -> dict[str, Any]:
    return {
        "vocab_size": len(sp.pieces),
        "model_type": {1: "unigram", 2: "bpe", 3: "word", 4: "char"}.get(sp.model_type, str(sp.model_type)),
        "byte_fallback": sp.byte_fallback,
        "byte_pieces": len(sp.ids_of_type(BYTE)),
        "normalizer": sp.normalizer_name or "(custom)",
        "add_dummy_prefix": sp.add_dummy_prefix,
        "remove_extra_whitespaces": sp.remove_extra_whitespaces,
        "escape_whitespaces": sp.escape_whitespaces,
        "unk_surface": sp.unk_surface,
        "special_tokens": {
            name: {"content": content, "id": sp.piece_to_id(content), "kind": sp.kind(content)}
            for name, content in sorted(declared.items())
        },
        "user_defined_pieces": [p.piece for p in sp.pieces if p.type == USER_DEFINED],
    }


def _describe_plan(plan: NormalizerPlan) -> dict[str, Any]:
    def point(c: str) -> str:
        return f"U+{ord(c):04X}"

    if not plan.uses_nfkc:
        return {"character_map": "none (SentencePiece's map is empty: identity)"}
    return {
        "character_map": "NFKC with rules",
        "code_points_rewritten_before_nfkc": sum(len(v) for v in plan.deltas.values()),
        "keys_rewritten_literally": len(plan.sequences),
        "keys_unresolved": [" ".join(point(c) for c in key) for key in plan.sequences_unresolved],
        "kept_from_nfkc": {point(c): point(p) for c, p in sorted(plan.protected.items())},
        "not_kept_from_nfkc": [point(c) for c in plan.unprotected],
        "blank": point(plan.blank) if plan.blank else None,
        "blocks_nfkc_across_characters": bool(plan.blocks),
    }


def _failure_report_path(out_dir: Path) -> Path:
    """Beside the stage's final directory: atomic_output_dir works in ``.<final>.tmp-XXXX``, deleted on failure."""
    match = re.match(r"^\.(.+)\.tmp-", out_dir.name)
    final = match.group(1) if match else out_dir.name
    return out_dir.parent / f"{final}.{PARITY_REPORT}"


def _versions() -> dict[str, str]:
    import sentencepiece
    import tokenizers

    return {"sentencepiece": sentencepiece.__version__, "tokenizers": tokenizers.__version__}


def measure_tokenizer_json(
    model_dir: Path, out_dir: Path, cases: list[Case], *, sweep: bool = False
) -> dict[str, Any]:
    """Convert the model's SentencePiece model to tokenizer.json (+ tokenizer_config.json) in ``out_dir`` and
    check it against SentencePiece and transformers' slow tokenizer on ``cases``; the report, no verdict.

    ``sweep``: also run every assigned code point and every key of SentencePiece's character map through
    both normalizers (a few seconds for nmt_nfkc).
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    spiece = find_spiece(model_dir)
    sp = read_sentencepiece(spiece)
    declared = declared_special_tokens(model_dir)
    tokenizer, plan = convert_sentencepiece(sp, declared.values(), source=str(spiece))
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / TOKENIZER_JSON), pretty=True)
    write_json(out_dir / TOKENIZER_CONFIG, tokenizer_config(model_dir, declared))
    slow, slow_version = transformers_slow_tokenizer(spiece, declared)
    parity = check_parity(out_dir / TOKENIZER_JSON, spiece, cases, declared.values(), slow=slow)
    swept = normalizer_sweep(sp, tokenizer, spiece) if sweep else {"skipped": True}
    return {
        "references": _versions() | {"transformers_slow": slow_version},
        "normalizer": _describe_plan(plan) | {"sweep": swept},
        "mlc": mlc_tokenizer_fields(out_dir),
        **parity,
    }


def _measure_alternative(model_dir: Path, cases: list[Case], *, sweep: bool) -> dict[str, Any]:
    """The tokenizer.json alternative's numbers on ``cases`` (converted in a scratch directory, not shipped)."""
    _progress("measuring the tokenizer.json alternative (not shipped)")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            measured = measure_tokenizer_json(model_dir, Path(tmp), cases, sweep=sweep)
    except UserError as err:  # a model the converter cannot express: SentencePiece still ships
        return {"unavailable": str(err)}
    summary = {
        key: measured[key]
        for key in ("cases", "ids_match_sentencepiece", "decoded_match_sentencepiece", "parity", "references")
    }
    return summary | {
        "mismatched_cases": [m["case"] for m in measured["mismatches"]],
        "normalizer": measured["normalizer"],
    }


def _ship_sentencepiece(
    model_dir: Path, spiece: Path, out_dir: Path, cases: list[Case], *, alternative: bool, sweep: bool
) -> dict[str, Any]:
    """``tokenizer.model`` (the model's own bytes) and the model's tokenizer_config.json, as MLC's gen_config
    copies them; checked through the shipped file, with the tokenizer.json alternative measured beside."""
    sp = read_sentencepiece(spiece)
    declared = declared_special_tokens(model_dir)
    shutil.copyfile(spiece, out_dir / TOKENIZER_MODEL)
    if (model_dir / TOKENIZER_CONFIG).is_file():
        shutil.copyfile(model_dir / TOKENIZER_CONFIG, out_dir / TOKENIZER_CONFIG)
    shipped = bundle_tokenizer(out_dir)
    if shipped.kind != "sentencepiece":
        raise RuntimeError(f"{out_dir}: MLC would load {shipped.path.name}, not {TOKENIZER_MODEL}")
    parity = check_shipped(
        shipped, load_sentencepiece(spiece), cases, byte_ids=set(sp.ids_of_type(BYTE)), unk_id=sp.unk_id
    )
    summary = _measure_alternative(model_dir, cases, sweep=sweep) if alternative else {"skipped": True}
    return {
        "shipped": {"file": TOKENIZER_MODEL, "loaded_by": "sentencepiece", "source": spiece.name},
        "references": _versions() | {"reference": f"sentencepiece on {spiece.name}"},
        "tokenizer": _describe(sp, declared),
        "tokenizer_json_alternative": summary,
        **parity,
    }


def _ship_tokenizer_json(model_dir: Path, source: Path, out_dir: Path, cases: list[Case]) -> dict[str, Any]:
    """A model's own tokenizer.json (and tokenizer_config.json), validated against the model and shipped as is."""
    shutil.copyfile(source, out_dir / TOKENIZER_JSON)
    if (model_dir / TOKENIZER_CONFIG).is_file():
        shutil.copyfile(model_dir / TOKENIZER_CONFIG, out_dir / TOKENIZER_CONFIG)
    report = hf_json.validate(model_dir, bundle_tokenizer(out_dir), cases)
    return {
        "shipped": {"file": TOKENIZER_JSON, "loaded_by": "tokenizers", "source": source.name},
        "references": _versions() | {"reference": "round trip: the text under the file's Unicode normalizer"},
        **report,
    }


def build_tokenizer(
    model_dir: Path, out_dir: Path, *, cases: Path | None = None, alternative: bool = True, sweep: bool = False
) -> dict[str, Any]:
    """Write the bundle's tokenizer files and parity-report.json for the model into ``out_dir``.

    ``cases``: the test set (default: the package's Japanese set).  ``alternative``: for a SentencePiece
    model, also measure the converted tokenizer.json on the cases (``sweep``: with the normalizer sweep).  Raises UserError when any case differs
    (ids or decoded text); the report is then also written beside ``out_dir`` (``<name>.parity-report.json``),
    because a failed stage leaves no directory behind.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    source = model_tokenizer_file(model_dir)
    cases_path = Path(cases) if cases is not None else default_cases_path()
    case_list = load_cases(cases_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    _progress(f"{source.name}: checking {len(case_list)} cases ({cases_path.name}) through the file the bundle ships")
    if source.name == TOKENIZER_JSON:
        body = _ship_tokenizer_json(model_dir, source, out_dir, case_list)
    else:
        body = _ship_sentencepiece(model_dir, source, out_dir, case_list, alternative=alternative, sweep=sweep)
    report: dict[str, Any] = {
        "source": {"file": source.name, "sha256": _sha256(source)},
        "cases_file": {"name": cases_path.name, "sha256": _sha256(cases_path)},
        "mlc": mlc_tokenizer_fields(out_dir),
        **body,
    }
    write_json(out_dir / PARITY_REPORT, report)
    beside = _failure_report_path(out_dir)
    if report["mismatches"]:
        write_json(beside, report)
        names = ", ".join(m["case"] for m in report["mismatches"][:5])
        more = len(report["mismatches"]) - 5
        raise UserError(
            f"{source}: the bundle's {report['shipped']['file']} differs from its reference on "
            f"{len(report['mismatches'])} of {report['cases']} cases ({names}{f', and {more} more' if more > 0 else ''}); "
            f"see {beside}."
        )
    beside.unlink(missing_ok=True)
    _progress(
        f"parity 100 %: {report['cases']} cases, {report['tokens']} tokens, "
        f"{report['byte_fallback_tokens']} byte-fallback tokens ({report['shipped']['file']})"
    )
    return report
