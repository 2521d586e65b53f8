"""What a model is evaluated on: the text (a bundled set or a file) as token rows, and the chat prompts.

The evaluation text is a setting (``evaluation.text`` in config/config.yaml, per model): a bundled set
by name (``src/hf2mlc/data/<name>.txt``, documents separated by blank lines; ``demo_heldout`` is the
demo model's own held-out chats) or a path to a UTF-8 file of the same shape.  Documents are encoded
with nothing in front, each token predicting the next and ``</s>`` after the last; a document longer
than the host library's context window is cut into consecutive windows (each scored from an empty
context), so no text is dropped.  The reference and every build's evaluation read the same rows: the
reference stores them and the evaluation replays them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .model.gpt_neox.config import GPTNeoXConfig

DATA = Path(__file__).with_name("data")
#: The demo model's held-out chats (``heldout.txt`` in its download), rendered as MLC's engine shows them.
DEMO_HELDOUT = "demo_heldout"


@dataclass(frozen=True)
class Tokenizer:
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]


@dataclass(frozen=True)
class EvaluationText:
    """Token rows of one evaluation text, with where they came from."""

    name: str
    description: str
    sha256: str  # of the text file's bytes
    rows: list[tuple[list[int], list[int]]]  # (inputs, targets): targets[t] follows inputs[: t + 1]

    @property
    def tokens(self) -> int:
        return sum(len(t) for _, t in self.rows)

    def tokens_sha256(self) -> str:
        """Identity of what the model is fed (text, tokenizer, windows and the token budget together)."""
        return hashlib.sha256(json.dumps(self.rows, separators=(",", ":")).encode()).hexdigest()


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """The model's own tokenizer: SentencePiece's ``spiece.model``/``tokenizer.model``, else tokenizer.json."""
    for name in ("spiece.model", "tokenizer.model"):
        if (model_dir / name).is_file():
            import sentencepiece as spm

            processor = spm.SentencePieceProcessor(model_file=str(model_dir / name))
            return Tokenizer(lambda text: list(processor.encode(text)), lambda ids: processor.decode(list(ids)))
    if (model_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer as HFTokenizer

        tokenizer = HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
        return Tokenizer(
            lambda text: tokenizer.encode(text, add_special_tokens=False).ids,
            lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False),
        )
    raise UserError(f"{model_dir}: no spiece.model, tokenizer.model or tokenizer.json to tokenize the evaluation text with.")


def names_a_file(setting: str) -> bool:
    """Whether an ``evaluation.text``/``evaluation.prompts`` value is a file path (else a bundled name)."""
    path = Path(setting)
    return len(path.parts) > 1 or path.suffix == ".txt"


def bundled_file(setting: str) -> Path | None:
    """The bundled file a setting names (``src/hf2mlc/data/<name>.txt``), if it names one."""
    path = DATA / f"{setting}.txt"
    return path if not names_a_file(setting) and path.is_file() else None


def _setting_path(setting: str, base_dir: Path) -> Path:
    return Path(setting) if Path(setting).is_absolute() else Path(base_dir) / setting


def resolve_text_file(spec: str, model_dir: Path, *, base_dir: Path = Path(".")) -> Path:
    """The file an ``evaluation.text`` setting names: a bundled set, the demo's held-out chats, or a path."""
    if spec == DEMO_HELDOUT:
        path = Path(model_dir) / "heldout.txt"
        if not path.is_file():
            raise UserError(
                f"{model_dir}: evaluation.text is {DEMO_HELDOUT!r}, but the model has no heldout.txt (only the "
                "demo model does); name a bundled set or a file in config/config.yaml."
            )
        return path
    bundled = DATA / f"{spec}.txt"
    if not names_a_file(spec):
        if bundled.is_file():
            return bundled
        known = sorted(p.stem for p in DATA.glob("*.txt")) + [DEMO_HELDOUT]
        raise UserError(f"config/config.yaml: evaluation text {spec!r} is not a bundled set ({', '.join(known)}) nor a file path.")
    path = _setting_path(spec, base_dir)
    if not path.is_file():
        raise UserError(f"{path}: the evaluation text file named in config/config.yaml does not exist.")
    return path


def load_evaluation_text(
    model_dir: Path, spec: str, *, max_tokens: int, max_len: int, base_dir: Path = Path(".")
) -> EvaluationText:
    """Rows of the evaluation text until ``max_tokens`` targets, each at most ``max_len`` tokens."""
    model_dir = Path(model_dir)
    path = resolve_text_file(spec, model_dir, base_dir=base_dir)
    config = GPTNeoXConfig.from_file(model_dir)
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    if eos is None:
        raise UserError(f"{model_dir}/config.json: eos_token_id is not set; the evaluation ends documents with it.")
    encode = load_tokenizer(model_dir).encode
    raw = path.read_bytes()
    if spec == DEMO_HELDOUT:
        from .demo import chat_example
        from .demo_corpus import read_dialogues

        description = "the demo's held-out chats, as the engine renders them"
        documents = [chat_example(encode, doc) for doc in read_dialogues(path)]
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"{path}: the evaluation text is not UTF-8 ({err}).") from err
        description = "bundled evaluation text" if path.parent == DATA else "evaluation text file"
        documents = []
        for doc in (d.strip("\n") for d in text.split("\n\n") if d.strip()):
            ids = encode(doc)
            documents.append((ids, ids[1:] + [eos]))
    rows: list[tuple[list[int], list[int]]] = []
    total = 0
    for inputs, targets in documents:
        for start in range(0, len(inputs), max_len):
            if total >= max_tokens:
                break
            take = min(max_len, max_tokens - total)
            row = (inputs[start : start + take], targets[start : start + take])
            rows.append(row)
            total += len(row[1])
    if not rows:
        raise UserError(f"{path}: the evaluation text has no tokens.")
    name = spec if path.parent == DATA or spec == DEMO_HELDOUT else path.name
    return EvaluationText(name, description, hashlib.sha256(raw).hexdigest(), rows)


def load_prompts(spec: str, *, base_dir: Path = Path(".")) -> list[str]:
    """User messages for the side-by-side answers: a bundled list by name or a file, one per line."""
    path = _setting_path(spec, base_dir) if names_a_file(spec) else DATA / f"{spec}.txt"
    if not path.is_file():
        raise UserError(f"{path}: the chat prompts named by evaluation.prompts in config/config.yaml do not exist.")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        raise UserError(f"{path}: no prompts (one user message per line).")
    return prompts


def chat_prompts(templates: dict[str, dict[str, Any]], messages: list[str], encode: Callable[[str], list[int]]) -> list[dict[str, Any]]:
    """Every message rendered by every conversation template as MLC's engine would send it."""
    from .families import render_prompt

    out = []
    for template_name, template in templates.items():
        prefix = list(template.get("system_prefix_token_ids") or [])
        stops = [int(t) for t in template.get("stop_token_ids") or []]
        for message in messages:
            text = render_prompt(template, [("user", message)])
            out.append({
                "template": template_name,
                "message": message,
                "prompt": text,
                "prompt_ids": prefix + encode(text),
                "stop_token_ids": stops,
                "stop_str": list(template.get("stop_str") or []),
            })
    return out


def answer_text(ids: list[int], prompt: dict[str, Any], decode: Callable[[list[int]], str]) -> str:
    """The answer as the engine shows it: stop token dropped, text cut at the first stop string."""
    if ids and ids[-1] in prompt["stop_token_ids"]:
        ids = ids[:-1]
    text = decode(ids)
    for stop in prompt["stop_str"]:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text
