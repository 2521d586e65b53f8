"""Model families: what the 2023 write-up patched into MLC LLM's source, as checked configuration.

A family (``config/families/<name>.yaml``) declares a model's conversation template (roles, separators,
stop strings and token ids, BOS), the sampling defaults its model card recommends and the dtype overrides
its build needs.  :func:`conv_template` turns it into MLC's ``Conversation`` object for
``mlc-chat-config.json``; :func:`render_prompt` renders a conversation the way MLC's engine does; and
:func:`validate_family` checks the template against the model's own tokenizer, because a template that
looks right can still be wrong for the model: the write-up's ``<NL>`` separator and stop ids ``[3, 0]`` are
rinna's, while LINE's tokenizer encodes real newlines and ends text with ``</s>`` (id 2).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from . import schemas
from .errors import UserError

log = logging.getLogger(__name__)

#: MLC's message placeholders (protocol/conversation_protocol.py, MessagePlaceholders).
PLACEHOLDERS = {
    "system": "{system_message}",
    "user": "{user_message}",
    "assistant": "{assistant_message}",
    "tool": "{tool_message}",
}


@dataclasses.dataclass(frozen=True)
class Family:
    """One ``config/families/<name>.yaml``, parsed and schema-checked."""

    path: Path
    name: str
    description: str
    #: MLC ``Conversation`` fields as written in the YAML (defaults are filled in by :func:`conv_template`).
    template: dict[str, Any]
    #: What each ``stop_token_ids`` entry must decode to (one of these pieces).
    stop_tokens: tuple[str, ...]
    #: What each ``system_prefix_token_ids`` entry must decode to, in order.
    system_prefix_tokens: tuple[str, ...]
    #: A conversation and the exact prompt text the model card builds for it.
    example_messages: tuple[tuple[str, str], ...]
    example_prompt: str
    #: mlc-chat-config.json sampling defaults from the model card (temperature, top_p, …).
    generation: dict[str, float]
    #: Build overrides (``ffn_out_dtype``).
    overrides: dict[str, str]
    #: Logged when the family is loaded (seed-compat says why it is wrong for LINE).
    warning: str | None = None
    #: "warn": template/tokenizer mismatches are reported as warnings instead of failing (seed-compat only).
    on_mismatch: str = "error"
    source: str = ""


def load_family(path: Path) -> Family:
    """Read and schema-check a family YAML (config/family.schema.yaml); log its warning, if it has one."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"{path}: cannot read the family file ({err.strerror}).") from err
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({err}).") from err
    schemas.check(raw, "family.schema.yaml", where=path, readme="config/families/README.md")
    template = dict(raw["template"])
    expect = raw["expect"]
    prefix_ids = template.get("system_prefix_token_ids")
    prefix_tokens = tuple(expect.get("system_prefix_tokens") or ())
    if len(prefix_ids or ()) != len(prefix_tokens):
        raise UserError(
            f"{path}: expect.system_prefix_tokens has {len(prefix_tokens)} entries but "
            f"template.system_prefix_token_ids has {len(prefix_ids or ())}; name the piece each id must be."
        )
    for role, text in (template.get("role_templates") or {}).items():
        if PLACEHOLDERS[role] not in text:
            raise UserError(f"{path}: template.role_templates.{role} must contain {PLACEHOLDERS[role]}.")
    for role, _ in raw["prompt_example"]["messages"]:
        if role != "system" and role not in template["roles"]:
            raise UserError(
                f"{path}: prompt_example.messages uses role {role!r}, which template.roles does not define."
            )
    family = Family(
        path=path,
        name=raw["name"],
        description=raw["description"].strip(),
        template=template,
        stop_tokens=tuple(expect["stop_tokens"]),
        system_prefix_tokens=prefix_tokens,
        example_messages=tuple((role, text) for role, text in raw["prompt_example"]["messages"]),
        example_prompt=raw["prompt_example"]["prompt"],
        generation=dict(sorted((raw.get("generation") or {}).items())),
        overrides=dict(sorted((raw.get("overrides") or {}).items())),
        warning=(raw.get("warning") or "").strip() or None,
        on_mismatch=raw.get("on_mismatch", "error"),
        source=raw.get("source", ""),
    )
    if family.warning:
        log.warning("family %s (%s): %s", family.name, path, family.warning)
    return family


def conv_template(family: Family) -> dict[str, Any]:
    """MLC's ``Conversation`` for mlc-chat-config.json ``conv_template``: every field, as gen_config dumps it."""
    t = family.template
    role_templates = {role: PLACEHOLDERS[role] for role in ("user", "assistant", "tool")}
    role_templates.update(t.get("role_templates") or {})
    prefix = t.get("system_prefix_token_ids")
    return {
        "name": family.name,
        "system_template": t.get("system_template", PLACEHOLDERS["system"]),
        "system_message": t.get("system_message", ""),
        "system_prefix_token_ids": list(prefix) if prefix else None,
        "add_role_after_system_message": t.get("add_role_after_system_message", True),
        "roles": dict(t["roles"]),
        "role_templates": role_templates,
        "messages": [],
        "seps": list(t["seps"]),
        "role_content_sep": t.get("role_content_sep", ""),
        "role_empty_sep": t.get("role_empty_sep", ""),
        "stop_str": list(t.get("stop_str") or []),
        "stop_token_ids": list(t["stop_token_ids"]),
        "strip_reasoning_in_history": False,
        "function_string": "",
        "use_function_calling": False,
    }


def render_prompt(conv_template: dict[str, Any], messages: Sequence[tuple[str, str | None]]) -> str:
    """The prompt text MLC's engine builds (cpp/json_ffi/conv_template.cc, ``CreatePrompt``), for text
    messages, followed by the assistant's turn opening.  ``system_prefix_token_ids`` are tokens, not
    text: they are prepended to the encoded prompt, not part of the string returned here.
    """
    conv = conv_template
    history = [*(tuple(m) for m in conv.get("messages") or []), *messages]
    system = [text for role, text in history if role == "system"]
    text = _replace_first(
        conv.get("system_template", PLACEHOLDERS["system"]),
        PLACEHOLDERS["system"],
        "".join(system) if system else conv.get("system_message", ""),
    )
    seps = list(conv["seps"])
    counted = 0
    for role, content in [*history, ("assistant", None)]:
        if role == "system":
            continue
        if role not in conv["roles"]:
            raise UserError(
                f"conversation template {conv.get('name')!r}: role {role!r} is not one of {sorted(conv['roles'])}."
            )
        name = conv["roles"][role]
        if content is None:
            text += name + conv.get("role_empty_sep", "")
            continue
        counted += 1
        separator = seps[(1 if role == "assistant" else 0) % len(seps)]
        if conv.get("add_role_after_system_message", True) or not text or counted != 1:
            text += name + conv.get("role_content_sep", "")
        role_template = (conv.get("role_templates") or {}).get(role, PLACEHOLDERS[role])
        text += _replace_first(role_template, PLACEHOLDERS[role], content) + separator
    return text


def _replace_first(text: str, placeholder: str, value: str) -> str:
    return text.replace(placeholder, value, 1)


# ---------------------------------------------------------------------------------------------------
# Validation against the model's tokenizer


class _ModelTokenizer:
    """The model's tokenizer as its bundle will tokenize (:func:`hf2mlc.tokenizer.model_tokenizer`: the
    SentencePiece model shipped as tokenizer.model, else the model's tokenizer.json), so a template is checked
    against the ids MLC's runtime will really produce for it."""

    def __init__(self, model_dir: Path) -> None:
        from .tokenizer import hf_json
        from .tokenizer.bundle import model_tokenizer
        from .tokenizer.proto import read_sentencepiece

        self.bundle = model_tokenizer(model_dir)
        self.spiece = self.bundle.path
        self.size = self.bundle.vocab_size
        self.sentencepiece = read_sentencepiece(self.spiece) if self.bundle.kind == "sentencepiece" else None
        self._normalizers = [] if self.sentencepiece else hf_json.describe(self.spiece)["normalizer"]

    def encode(self, text: str) -> list[int]:
        return self.bundle.encode(text)

    def piece(self, token_id: int) -> str:
        return self.bundle.id_to_piece(token_id)

    def shown(self, ids: list[int]) -> str:
        """Text as MLC's runtime decodes it."""
        return self.bundle.decode(ids)

    def as_normalized(self, text: str) -> str:
        """``text`` with the only change a faithful tokenizer may make to it: SentencePiece's space handling,
        or a tokenizer.json's Unicode normalization."""
        if self.sentencepiece is not None:
            return re.sub(" {2,}", " ", text).strip(" ") if self.sentencepiece.remove_extra_whitespaces else text
        from .tokenizer import hf_json

        expected = hf_json.expected_round_trip(text, self._normalizers)
        return text if expected is None else expected

    def drops_trailing_space(self) -> bool:
        return self.sentencepiece is not None and self.sentencepiece.remove_extra_whitespaces

    def is_unknown_word(self, text: str) -> bool:
        """``text`` looks like a control token (``<NL>``) but the tokenizer reads it as characters."""
        if self.sentencepiece is None:
            return len(self.encode(text)) > 1
        # SentencePiece matches only normal and user-defined pieces in text (control pieces are read as characters).
        return self.sentencepiece.kind(text) not in ("normal", "user_defined")


def _model_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err}).") from err


def validate_family(family: Family, model_dir: Path) -> dict[str, Any]:
    """Check the family's template against the model's tokenizer and model card; return the findings.

    Errors (a stop id outside the vocabulary or decoding to another piece, the model's eos not among the
    stop ids, a separator or role name the tokenizer does not give back, an example prompt that differs
    from the card's) raise UserError naming the first field — unless the family says
    ``on_mismatch: warn`` (seed-compat), in which case they are logged and reported as warnings.
    """
    model_dir = Path(model_dir)
    tok = _ModelTokenizer(model_dir)
    config = _model_config(model_dir)
    where = str(family.path)
    template = conv_template(family)
    errors: list[str] = []  # the template is wrong for this model
    warnings: list[str] = []  # it works, but not the way it reads
    notes: list[str] = []  # worth knowing

    # Stop token ids: in the vocabulary, and each one of the pieces the family means.
    stop_ids = template["stop_token_ids"]
    wanted = family.stop_tokens
    wanted_text = repr(wanted[0]) if len(wanted) == 1 else f"one of {list(wanted)}"
    stops = []
    for i, token_id in enumerate(stop_ids):
        if token_id >= tok.size:
            errors.append(
                f"{where}: stop_token_ids[{i}]={token_id} is outside the vocabulary "
                f"({tok.size} pieces in {tok.spiece.name})."
            )
            stops.append({"id": token_id, "piece": None, "ok": False})
            continue
        piece = tok.piece(token_id)
        ok = piece in wanted
        stops.append({"id": token_id, "piece": piece, "ok": ok})
        if not ok:
            errors.append(f"{where}: stop_token_ids[{i}]={token_id} decodes to {piece!r}, not {wanted_text}.")
    eos = config.get("eos_token_id")
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    for token_id in eos_ids:
        if token_id not in stop_ids:
            piece = tok.piece(token_id) if 0 <= token_id < tok.size else "?"
            errors.append(
                f"{where}: stop_token_ids {stop_ids} do not include the model's eos_token_id {token_id} "
                f"({piece!r}, config.json); add it."
            )

    # BOS / system prefix tokens.
    prefix_ids = template["system_prefix_token_ids"] or []
    for i, (token_id, expected) in enumerate(zip(prefix_ids, family.system_prefix_tokens, strict=True)):
        piece = tok.piece(token_id) if token_id < tok.size else None
        if piece != expected:
            errors.append(
                f"{where}: system_prefix_token_ids[{i}]={token_id} decodes to {piece!r}, not {expected!r}."
                if piece is not None
                else f"{where}: system_prefix_token_ids[{i}]={token_id} is outside the vocabulary ({tok.size} pieces)."
            )

    # Template strings: given back by the tokenizer, and how many tokens each is.
    strings: list[tuple[str, str]] = [
        ("roles.user", template["roles"]["user"]),
        ("roles.assistant", template["roles"]["assistant"]),
        *((f"seps[{i}]", s) for i, s in enumerate(template["seps"])),
        ("role_content_sep", template["role_content_sep"]),
        ("role_empty_sep", template["role_empty_sep"]),
        *((f"stop_str[{i}]", s) for i, s in enumerate(template["stop_str"])),
    ]
    if template["system_message"]:
        strings.append(("system_message", template["system_message"]))
    pieces_report: dict[str, Any] = {}
    for field, text in strings:
        if not text:
            continue
        ids = tok.encode(text)
        back = tok.shown(ids)
        entry = {"text": text, "ids": ids, "pieces": [tok.piece(i) for i in ids], "decodes_to": back}
        pieces_report[field] = entry
        if back != tok.as_normalized(text):
            errors.append(f"{where}: {field}={text!r} does not survive the model's tokenizer: it decodes to {back!r}.")
        elif re.fullmatch(r"<[^<>\s]+>", text) and tok.is_unknown_word(text):
            # Mid-prompt there is no dummy "▁" in front: show the pieces the model reads there.
            inner = entry["pieces"][1:] if entry["pieces"][:1] == ["▁"] else entry["pieces"]
            warnings.append(
                f"{where}: {field}={text!r} is not a token of this model's tokenizer: it is encoded as "
                f"{len(inner)} pieces {inner}, so the model reads the literal characters."
            )

    # The example conversation must render to the model card's prompt, token for token.
    rendered = render_prompt(template, family.example_messages)
    rendered_ids = list(prefix_ids) + tok.encode(rendered)
    card_ids = tok.encode(family.example_prompt)
    if rendered != family.example_prompt:
        errors.append(
            f"{where}: prompt_example: the template renders {rendered!r}, but the model card's prompt is "
            f"{family.example_prompt!r}."
        )
    elif rendered_ids != card_ids:
        errors.append(
            f"{where}: prompt_example: the template's token ids {rendered_ids} differ from the card's "
            f"encoding {card_ids} (system_prefix_token_ids adds {prefix_ids})."
        )
    if rendered.endswith(" ") and tok.drops_trailing_space():
        notes.append(
            f"{where}: the prompt ends in a space, which SentencePiece drops: the model sees "
            f"{tok.shown(tok.encode(rendered))[-12:]!r} at the end, exactly as the card's own encoding does."
        )

    if errors and family.on_mismatch == "error":
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise UserError(errors[0] + more)
    warnings = errors + warnings  # on_mismatch: warn
    for message in warnings:
        log.warning("%s", message)
    for message in notes:
        log.info("%s", message)
    return {
        "family": family.name,
        "family_file": family.path.name,
        "tokenizer": {"file": tok.spiece.name, "loaded_by": tok.bundle.kind, "pieces": tok.size},
        "valid": not errors,
        "stop_token_ids": stops,
        "eos_token_id": eos if eos is not None else None,
        "system_prefix_token_ids": prefix_ids,
        "strings": pieces_report,
        "prompt_example": {
            "messages": [list(m) for m in family.example_messages],
            "rendered": rendered,
            "card_prompt": family.example_prompt,
            "matches_card": rendered == family.example_prompt and rendered_ids == card_ids,
            "token_ids": rendered_ids,
            "card_token_ids": card_ids,
        },
        "mismatches": errors,
        "warnings": warnings,
        "notes": notes,
        "generation": family.generation,
        "overrides": family.overrides,
    }
