"""The tokenizer stage: convert, check parity, write the report; refuse when any case differs."""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..manifest import write_json
from .cases import default_cases_path, load_cases
from .convert import convert_sentencepiece, tokenizer_config
from .mlc import mlc_tokenizer_fields
from .names import PARITY_REPORT, SPIECE_NAME, TOKENIZER_CONFIG, TOKENIZER_JSON
from .normalizer import NormalizerPlan
from .parity import check_parity, normalizer_sweep, transformers_slow_tokenizer
from .proto import BYTE, USER_DEFINED, SentencePieceModel, read_sentencepiece
from .special_tokens import declared_special_tokens


def _progress(message: str) -> None:
    print(f"[hf2mlc tokenizer] {message}", file=sys.stderr, flush=True)


def find_spiece(model_dir: Path) -> Path:
    for name in (SPIECE_NAME, "tokenizer.model"):
        if (model_dir / name).is_file():
            return model_dir / name
    raise UserError(
        f"{model_dir}: no {SPIECE_NAME} (or tokenizer.model); the tokenizer stage converts a SentencePiece model."
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _describe(sp: SentencePieceModel, declared: dict[str, str]) -> dict[str, Any]:
    return {
        "vocab_size": len(sp.pieces),
        "model_type": "unigram",
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


def build_tokenizer(
    model_dir: Path, out_dir: Path, *, cases: Path | None = None, sweep: bool = True
) -> dict[str, Any]:
    """Write tokenizer.json, tokenizer_config.json and parity-report.json for the model into ``out_dir``.

    ``cases``: the parity test set (default: the package's Japanese set).  ``sweep``: also run every
    assigned code point and every key of SentencePiece's character map through both normalizers (a few
    seconds for nmt_nfkc; reported, not pass/fail).  Raises UserError when any case differs from
    SentencePiece (ids or decoded text); the report is then also written beside ``out_dir``
    (``<name>.parity-report.json``), because a failed stage leaves no directory behind.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    spiece = find_spiece(model_dir)
    sp = read_sentencepiece(spiece)
    declared = declared_special_tokens(model_dir)
    _progress(f"{spiece.name}: {len(sp.pieces)} pieces; building tokenizer.json")
    tokenizer, plan = convert_sentencepiece(sp, declared.values(), source=str(spiece))
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / TOKENIZER_JSON), pretty=True)
    write_json(out_dir / TOKENIZER_CONFIG, tokenizer_config(model_dir, declared))

    cases_path = Path(cases) if cases is not None else default_cases_path()
    case_list = load_cases(cases_path)
    slow, slow_version = transformers_slow_tokenizer(spiece, declared)
    _progress(f"parity on {len(case_list)} cases ({cases_path.name}) against sentencepiece and {slow_version}")
    parity = check_parity(out_dir / TOKENIZER_JSON, spiece, case_list, declared.values(), slow=slow)
    if sweep:
        _progress("sweeping every code point and character-map key through both normalizers")
    swept = normalizer_sweep(sp, tokenizer, spiece) if sweep else {"skipped": True}
    import sentencepiece
    import tokenizers

    report: dict[str, Any] = {
        "source": {"file": spiece.name, "sha256": _sha256(spiece)},
        "cases_file": {"name": cases_path.name, "sha256": _sha256(cases_path)},
        "references": {
            "sentencepiece": sentencepiece.__version__,
            "transformers_slow": slow_version,
            "tokenizers": tokenizers.__version__,
        },
        "tokenizer": _describe(sp, declared),
        "normalizer": _describe_plan(plan) | {"sweep": swept},
        "mlc": mlc_tokenizer_fields(out_dir),
        **parity,
    }
    write_json(out_dir / PARITY_REPORT, report)
    beside = _failure_report_path(out_dir)
    if parity["mismatches"]:
        write_json(beside, report)
        names = ", ".join(m["case"] for m in parity["mismatches"][:5])
        more = len(parity["mismatches"]) - 5
        raise UserError(
            f"{spiece}: tokenizer.json differs from SentencePiece on {len(parity['mismatches'])} of "
            f"{parity['cases']} cases ({names}{f', and {more} more' if more > 0 else ''}); see {beside}."
        )
    beside.unlink(missing_ok=True)
    _progress(
        f"parity 100 %: {parity['cases']} cases, {parity['tokens']} tokens, "
        f"{parity['byte_fallback_tokens']} byte-fallback tokens"
    )
    return report
