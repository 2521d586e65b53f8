"""The quality benchmark's model: a GPT-NeoX big and trained enough that quantization shows a cost.

The demo model (0.5M parameters, a generated corpus, perplexity 1.44) loses almost nothing to 4 bits, so
it cannot tell one quantization method from another.  This model copies LINE's architecture options (tied
embeddings, sequential residual, rotary_pct 1.0, float16 checkpoint, LINE's config spelling and special
ids: :mod:`hf2mlc.demo` writes those files and this module reuses them) at a size where 4-bit rounding is
measurable (hidden 512, 6 layers: 23M parameters), trained on real Japanese prose: Natsume Soseki's
*Wagahai wa neko de aru* (public domain, Aozora Bunko), read from the shared data directory at run time
and never copied into the project.

Splits: the cleaned paragraphs are cut into blocks of about BLOCK_CHARS characters; every SPLIT_PERIOD-th
block (offset HELDOUT_OFFSET) is held out, another (CALIBRATION_OFFSET) is the calibration split, the
rest trains both the tokenizer and the model.  Whole blocks, so no held-out sentence is next to a
training one in the same window.  The held-out split is never used for training or calibration.

Determinism: SentencePiece trains with one thread on a fixed sentence order, torch with fixed seeds, one
thread and deterministic algorithms (hf2mlc.demo's settings), batches from a seeded generator; so the
same recipe gives the same bytes on the same platform.  The model directory is cached under
``benchmarks/work/quality-model-<digest>/``, the digest taken over the recipe (every constant below,
the source text's sha256 and the versions of torch and sentencepiece): change any of them and a new
model is made.

    python benchmarks/quality_model.py [--text PATH] [--work DIR] [--measure]

``--measure`` times a few training steps and prints tokens/s (to size TRAIN_STEPS for a machine).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from hf2mlc import demo  # noqa: E402
from hf2mlc.errors import UserError  # noqa: E402
from hf2mlc.manifest import atomic_output_dir, write_json  # noqa: E402

TEXT_NAME = "wagahaiwa_nekodearu.txt"
#: Where the shared data lives relative to a checkout (../shared) or any folder above it.
TEXT_RELATIVE = Path("shared") / "data" / "text" / TEXT_NAME

#: Splits (see the module docstring).
BLOCK_CHARS = 2000
SPLIT_PERIOD = 16
HELDOUT_OFFSET = 5
CALIBRATION_OFFSET = 13

#: Tokenizer: SentencePiece unigram with byte fallback and nmt_nfkc, LINE's special ids, ``\n`` a piece.
VOCAB_SIZE = 8000

#: Shape: hidden a multiple of 32 (q4 groups tile every reduction axis); width rather than depth, which is
#: cheaper per parameter on a CPU.
HIDDEN_SIZE = 512
NUM_HEADS = 8
NUM_LAYERS = 6
INTERMEDIATE_SIZE = 4 * HIDDEN_SIZE
#: Training window (and the evaluation window: a model is scored on the context length it learned).
SEQ_LEN = 256

TRAIN_STEPS = 360
BATCH_SIZE = 4
PEAK_LR = 1.5e-3
WARMUP_STEPS = 20
WEIGHT_DECAY = 0.1
SEED = 0
#: Training matmuls in bfloat16 (torch.autocast; the weights and optimizer stay float32): about twice as
#: fast on CPUs with AVX512-BF16.  Evaluation is always float32.
AUTOCAST = "bfloat16"

RECIPE: dict[str, Any] = {
    "block_chars": BLOCK_CHARS, "split_period": SPLIT_PERIOD, "heldout_offset": HELDOUT_OFFSET,
    "calibration_offset": CALIBRATION_OFFSET, "vocab_size": VOCAB_SIZE, "hidden_size": HIDDEN_SIZE,
    "num_heads": NUM_HEADS, "num_layers": NUM_LAYERS, "intermediate_size": INTERMEDIATE_SIZE,
    "seq_len": SEQ_LEN, "train_steps": TRAIN_STEPS, "batch_size": BATCH_SIZE, "peak_lr": PEAK_LR,
    "warmup_steps": WARMUP_STEPS, "weight_decay": WEIGHT_DECAY, "seed": SEED, "autocast": AUTOCAST, "torch_threads": demo.TORCH_THREADS,
    "cleaning": 2,  # bump when clean_aozora changes
}

#: Files of the model directory: an HF model plus the split texts (not named heldout.txt, which hf2mlc's
#: evaluation reads as the demo's chats) and the statistics.
SPLIT_FILES = {"train": "train_text.txt", "heldout": "heldout_text.txt", "calibration": "calibration_text.txt"}
STATS_NAME = "quality_model.json"


def _progress(message: str) -> None:
    print(f"[quality model] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# Text


def find_text(explicit: Path | None = None) -> Path:
    """The novel: ``--text`` if given, else ``shared/data/text/`` beside the checkout or in a folder above."""
    if explicit is not None:
        if not explicit.is_file():
            raise UserError(f"{explicit}: not found; pass --text with the path of {TEXT_NAME}.")
        return explicit
    for folder in REPO.parents:
        if (folder / TEXT_RELATIVE).is_file():
            return folder / TEXT_RELATIVE
    raise UserError(f"{TEXT_RELATIVE} not found beside the checkout or above it; pass --text PATH.")


_RUBY = re.compile(r"《[^》]*》")
_NOTE = re.compile(r"※?［＃[^］]*］")


def clean_aozora(raw: str) -> list[str]:
    """The novel's paragraphs without Aozora Bunko's markup.

    Drops the notation header (between the first two dashed rules) and the colophon (from ``底本：``), the
    ruby readings ``《…》``, the ruby start mark ``｜``, and the editor's notes ``［＃…］`` (with the ``※`` that
    marks an unencodable character in front of one); strips the paragraph indent.
    """
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    rules = [m.start() for m in re.finditer(r"^-{20,}$", text, flags=re.M)]
    if len(rules) >= 2:
        text = text[text.index("\n", rules[1]) + 1 :]
    end = text.find("\n底本：")
    if end >= 0:
        text = text[:end]
    text = _NOTE.sub("", _RUBY.sub("", text)).replace("｜", "")
    return [line.strip() for line in text.split("\n") if line.strip()]


def split_paragraphs(paragraphs: list[str]) -> dict[str, list[str]]:
    """train / heldout / calibration paragraphs, by whole blocks of about BLOCK_CHARS characters."""
    blocks: list[list[str]] = [[]]
    size = 0
    for paragraph in paragraphs:
        blocks[-1].append(paragraph)
        size += len(paragraph)
        if size >= BLOCK_CHARS:
            blocks.append([])
            size = 0
    splits: dict[str, list[str]] = {"train": [], "heldout": [], "calibration": []}
    for index, block in enumerate(b for b in blocks if b):
        phase = index % SPLIT_PERIOD
        name = "heldout" if phase == HELDOUT_OFFSET else "calibration" if phase == CALIBRATION_OFFSET else "train"
        splits[name] += block
    return splits


# ---------------------------------------------------------------------------------------------------
# Tokenizer and token streams


def train_tokenizer(paragraphs: list[str]) -> bytes:
    """SentencePiece unigram, byte fallback, nmt_nfkc, LINE's special pieces and ids, ``\\n`` a piece."""
    # Some of the novel's paragraphs are longer than the trainer's default sentence limit.
    return demo.train_line_like_sentencepiece(paragraphs, VOCAB_SIZE, max_sentence_length=8192)


def encode_text(encode: Any, text: str) -> list[int]:
    """A split file's token stream: the text encoded whole (newlines are pieces), nothing in front."""
    return list(encode(text))


def eval_windows(ids: list[int], length: int = SEQ_LEN) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) windows of ``length`` tokens, back to back, each scored from an empty context.

    The definition of this model's perplexity: the benchmark scores every build on the same windows.
    """
    return [(ids[s : s + length], ids[s + 1 : s + length + 1]) for s in range(0, len(ids) - length, length)]


# ---------------------------------------------------------------------------------------------------
# Model


def model_config() -> dict[str, Any]:
    """LINE's config.json spelling (hf2mlc.demo) at this model's size."""
    config = demo.model_config()
    config.update(hidden_size=HIDDEN_SIZE, num_attention_heads=NUM_HEADS, num_hidden_layers=NUM_LAYERS,
                  intermediate_size=INTERMEDIATE_SIZE, vocab_size=VOCAB_SIZE)
    return config


def _learning_rate(step: int) -> float:
    if step < WARMUP_STEPS:
        return PEAK_LR * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, TRAIN_STEPS - WARMUP_STEPS)
    return PEAK_LR * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _windows(ids: list[int], generator: Any) -> Iterator[Any]:
    """Batches of BATCH_SIZE random training windows of SEQ_LEN + 1 tokens, forever."""
    import torch

    stream = torch.tensor(ids, dtype=torch.long)
    while True:
        starts = torch.randint(0, len(ids) - SEQ_LEN - 1, (BATCH_SIZE,), generator=generator)
        yield torch.stack([stream[s : s + SEQ_LEN + 1] for s in starts.tolist()])


def perplexity(model: Any, windows: list[tuple[list[int], list[int]]]) -> float:
    """exp(mean NLL) over every target of ``windows`` (:func:`eval_windows`), float32."""
    import torch
    import torch.nn.functional as F

    model.eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(windows), 8):
            chunk = windows[start : start + 8]
            inputs = torch.tensor([w[0] for w in chunk])
            targets = torch.tensor([w[1] for w in chunk])
            logits = model(input_ids=inputs).logits.float()
            nll += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
            count += targets.numel()
    return math.exp(nll / count)


def train(model: Any, ids: list[int], steps: int, *, report_every: int = 20) -> tuple[float, float]:
    """AdamW on random windows; returns (mean loss of the last 20 steps, tokens per second)."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(SEED)
    batches = _windows(ids, generator)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    keep = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": keep, "weight_decay": 0.0}], lr=PEAK_LR, betas=(0.9, 0.95))
    model.train()
    recent: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        batch = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step)
        with torch.autocast("cpu", dtype=getattr(torch, AUTOCAST), enabled=AUTOCAST != "float32"):
            logits = model(input_ids=batch[:, :-1]).logits.float()
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        recent = (recent + [loss.item()])[-20:]
        if (step + 1) % report_every == 0 or step + 1 == steps:
            elapsed = time.perf_counter() - start
            rate = (step + 1) * BATCH_SIZE * SEQ_LEN / elapsed
            eta = (steps - step - 1) * elapsed / (step + 1)
            _progress(f"train step {step + 1}/{steps}: loss {recent[-1]:.3f}, {rate:.0f} tokens/s, "
                      f"{elapsed:.0f} s elapsed, about {eta:.0f} s left")
    elapsed = time.perf_counter() - start
    return sum(recent) / len(recent), steps * BATCH_SIZE * SEQ_LEN / elapsed


# ---------------------------------------------------------------------------------------------------
# Entry points


def recipe_digest(text_path: Path) -> str:
    """12 hex digits over the recipe, the source text and the packages that decide the bytes."""
    recipe = {**RECIPE, "text_sha256": hashlib.sha256(text_path.read_bytes()).hexdigest(),
              "torch": importlib.metadata.version("torch"),
              "sentencepiece": importlib.metadata.version("sentencepiece")}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def default_work() -> Path:
    return REPO / "benchmarks" / "work"


def model_dir_for(text_path: Path, work: Path) -> Path:
    return work / f"quality-model-{recipe_digest(text_path)}"


def load_stats(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / STATS_NAME).read_text(encoding="utf-8"))


def ensure_model(text: Path | None = None, work: Path | None = None) -> Path:
    """The cached model directory for the current recipe, made first if missing (about 25 min on 1 core)."""
    text_path = find_text(text)
    out = model_dir_for(text_path, work or default_work())
    if (out / STATS_NAME).is_file():
        return out
    make_model(text_path, out)
    return out


def make_model(text_path: Path, out: Path) -> dict[str, Any]:
    import safetensors.torch
    import sentencepiece as spm

    clock = time.perf_counter()
    splits = split_paragraphs(clean_aozora(text_path.read_text(encoding="utf-8")))
    texts = {name: "\n".join(paragraphs) + "\n" for name, paragraphs in splits.items()}
    spiece = train_tokenizer(splits["train"])
    sp = spm.SentencePieceProcessor(model_proto=spiece)
    ids = {name: encode_text(sp.encode, text) for name, text in texts.items()}
    heldout = eval_windows(ids["heldout"])
    _progress(f"text: {', '.join(f'{n} {len(t):,} chars / {len(ids[n]):,} tokens' for n, t in texts.items())}; "
              f"tokenizer {sp.get_piece_size()} pieces ({time.perf_counter() - clock:.0f} s)")
    stats: dict[str, Any] = {"recipe": RECIPE, "source": TEXT_NAME,
                             "source_sha256": hashlib.sha256(text_path.read_bytes()).hexdigest(),
                             "characters": {n: len(t) for n, t in texts.items()},
                             "tokens": {n: len(v) for n, v in ids.items()},
                             "heldout_windows": len(heldout)}
    with atomic_output_dir(out) as tmp:
        write_json(tmp / "config.json", model_config())
        with demo._deterministic_torch(SEED):
            model = demo._build_model(tmp)
            stats["parameters"] = sum(p.numel() for p in model.parameters())
            stats["initial_heldout_perplexity"] = round(perplexity(model, heldout), 3)
            train_start = time.perf_counter()
            loss, rate = train(model, ids["train"], TRAIN_STEPS)
            stats["train_seconds"] = round(time.perf_counter() - train_start, 1)
            state = demo._float16_state(model)
            result = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
            if result.unexpected_keys or set(result.missing_keys) - {"lm_head.weight", "embed_out.weight"}:
                raise RuntimeError(f"float16 weights do not fit the model: {result}")
            stats["heldout_perplexity_fp32_of_fp16_weights"] = round(perplexity(model, heldout), 4)
        stats.update(final_train_loss=round(loss, 4), train_tokens_per_second=round(rate, 1),
                     train_tokens_seen=TRAIN_STEPS * BATCH_SIZE * SEQ_LEN)
        safetensors.torch.save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "spiece.model").write_bytes(spiece)
        write_json(tmp / "tokenizer_config.json", demo.tokenizer_config())
        write_json(tmp / "special_tokens_map.json", demo.special_tokens_map())
        write_json(tmp / "generation_config.json", demo.generation_config())
        for name, file in SPLIT_FILES.items():
            (tmp / file).write_text(texts[name], encoding="utf-8", newline="\n")
        stats["total_seconds"] = round(time.perf_counter() - clock, 1)
        write_json(tmp / STATS_NAME, stats)
        for path in tmp.iterdir():
            path.chmod(0o644)
    _progress(f"wrote {out}: {stats['parameters']:,} parameters, held-out perplexity "
              f"{stats['initial_heldout_perplexity']:.0f} -> {stats['heldout_perplexity_fp32_of_fp16_weights']:.2f} "
              f"({stats['total_seconds']:.0f} s)")
    return stats


def measure(text_path: Path, steps: int = 4) -> None:
    """Time a few training steps (nothing is written)."""
    import sentencepiece as spm

    splits = split_paragraphs(clean_aozora(text_path.read_text(encoding="utf-8")))
    sp = spm.SentencePieceProcessor(model_proto=train_tokenizer(splits["train"]))
    ids = encode_text(sp.encode, "\n".join(splits["train"]) + "\n")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, demo._deterministic_torch(SEED):
        write_json(Path(tmp) / "config.json", model_config())
        model = demo._build_model(Path(tmp))
        print(f"{sum(p.numel() for p in model.parameters()):,} parameters; {len(ids):,} training tokens")
        _, rate = train(model, ids, steps, report_every=1)
    print(f"{rate:.0f} tokens/s: {TRAIN_STEPS} steps take about {TRAIN_STEPS * BATCH_SIZE * SEQ_LEN / rate / 60:.1f} min")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--measure", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.measure:
            measure(find_text(args.text))
            return 0
        out = ensure_model(args.text, args.work)
    except UserError as error:
        print(f"hf2mlc: {error}", file=sys.stderr)
        return 2
    print(json.dumps(load_stats(out), indent=2))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
