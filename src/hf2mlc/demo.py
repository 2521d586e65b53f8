"""The embedded demo model: a small GPT-NeoX, in Hugging Face format, that the project makes itself.

It lets the whole workflow run offline and without a token, and it is built to fail where LINE's
``japanese-large-lm-3.6b-instruction-sft`` would: the same architecture options (tied embeddings with no
``embed_out.weight`` in the checkpoint, ``rotary_pct`` 1.0, sequential residual, float16, exact GELU), the
same legacy config keys (``rotary_pct``/``rotary_emb_base``, not transformers 5's ``rope_parameters``),
the same special-token ids and files (``spiece.model`` with a ``T5Tokenizer`` config, pad = ``</s>`` in
``special_tokens_map.json``), and a SentencePiece unigram tokenizer with byte fallback and ``nmt_nfkc``.

The tokenizer keeps ``\\n`` as a user-defined piece (id 7): ``nmt_nfkc`` alone would turn newlines into
spaces, and LINE's prompt format needs real newlines.  The model is trained for a few hundred steps on the
generated corpus (:mod:`hf2mlc.demo_corpus`) so that its weights predict text (held-out perplexity far
below uniform) and numerical comparisons between builds mean something.

It is trained to chat the way MLC's engine drives LINE's model with the ``line`` conversation template
(config/families/line.yaml): the prompt ``ユーザー: {input}\\nシステム: `` is encoded whole with no special
token in front, and generation ends when the model emits ``</s>`` (id 2), which never enters the history
of the next turn.  So each training row is one dialogue from its first token (padded, never packed after
another dialogue's ``</s>``), its inputs are the rendered conversation, and the model learns to emit
``</s>`` after every answer (:func:`chat_example`).

Determinism: the corpus comes from ``random.Random(seed)``, SentencePiece trains with one thread on a fixed
sentence order, and torch runs with fixed seeds, a fixed thread count and deterministic algorithms, so
every file is byte-identical from run to run on the same platform.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .demo_corpus import RARE_CHARACTERS, SYSTEM, USER, demo_corpus, split_exchanges, write_dialogues
from .errors import UserError
from .families import render_prompt
from .manifest import atomic_output_dir, write_json

#: Special pieces at LINE's ids: 0 ``<unk>``, 1 ``<s>``, 2 ``</s>``, 3 ``<pad>``, 4 ``<mask>``, 5 ``<cls>``,
#: 6 ``<sep>``.
SPECIAL_PIECES = ("<unk>", "<s>", "</s>", "<pad>", "<mask>", "<cls>", "<sep>")
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
#: The newline piece, right after the special pieces (byte pieces ``<0x00>``… follow it).
NEWLINE_ID = 7

#: SentencePiece vocabulary = config vocab_size.  A multiple of 32, and well below the largest vocabulary
#: the unigram trainer can reach on the corpus (about 1300), so every seed reaches it exactly.
VOCAB_SIZE = 1024

#: Sizes: hidden a multiple of 32 so that q4f16_0's groups of 32 tile every reduction axis.
HIDDEN_SIZE = 128
NUM_HEADS = 4
NUM_LAYERS = 2
INTERMEDIATE_SIZE = 4 * HIDDEN_SIZE
MAX_POSITIONS = 2048

#: Training schedule (fixed: part of what makes the bytes reproducible).  A batch is BATCH_SIZE whole
#: dialogues, padded to the longest; dialogues are batched with others of similar length (pools of
#: BUCKET_BATCHES batches sorted by length) so that padding costs little.
TRAIN_STEPS = 300
BATCH_SIZE = 16
BUCKET_BATCHES = 8
PEAK_LR = 3e-3
WARMUP_STEPS = 20
#: Threads torch uses while training.  Fixed, because a different thread count may split reductions
#: differently and change the low bits of the weights; and one, because OpenMP threads that share busy
#: cores spin (measured here: 300 steps took 378 s with 2 threads on 2 loaded cores, 47 s with 1).
TORCH_THREADS = 1

MODEL_FILES = (
    "README.md",
    "config.json",
    "generation_config.json",
    "heldout.txt",
    "model.safetensors",
    "special_tokens_map.json",
    "spiece.model",
    "tokenizer_config.json",
)


def _progress(message: str) -> None:
    print(f"[hf2mlc demo] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(dialogues: list[str]) -> bytes:
    """Train the demo's SentencePiece unigram model and return the serialized ``spiece.model``.

    The trainer sees one sentence per line: its normalizer turns a newline into a space anyway, and the
    newline piece is user-defined, so no learned piece can contain it.
    """
    return train_line_like_sentencepiece([line for text in dialogues for line in text.split("\n")], VOCAB_SIZE)


def train_line_like_sentencepiece(sentences: list[str], vocab_size: int, **trainer_options: Any) -> bytes:
    """A SentencePiece unigram model with LINE's conventions (byte fallback, nmt_nfkc, its special pieces
    and ids, ``\n`` a piece), serialized: the demo's and the quality benchmark's tokenizers, one recipe.
    ``trainer_options`` only where a caller needs more (they are recorded in the model's trainer spec)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        byte_fallback=True,
        normalization_rule_name="nmt_nfkc",
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=PAD_ID,
        unk_piece=SPECIAL_PIECES[UNK_ID],
        bos_piece=SPECIAL_PIECES[BOS_ID],
        eos_piece=SPECIAL_PIECES[EOS_ID],
        pad_piece=SPECIAL_PIECES[PAD_ID],
        control_symbols=list(SPECIAL_PIECES[4:]),
        user_defined_symbols=["\n"],
        character_coverage=0.9995,
        num_threads=1,
        minloglevel=2,
        **trainer_options,
    )
    return model.getvalue()


def _check_tokenizer(sp: Any) -> list[str]:
    """Fail loudly if the trainer did not put the pieces where LINE has them; return byte-fallback chars."""
    got = tuple(sp.id_to_piece(i) for i in range(len(SPECIAL_PIECES)))
    if got != SPECIAL_PIECES or sp.id_to_piece(NEWLINE_ID) != "\n" or sp.get_piece_size() != VOCAB_SIZE:
        raise RuntimeError(f"demo tokenizer layout is wrong: {got!r}, id 7 {sp.id_to_piece(NEWLINE_ID)!r}")
    return [ch for ch in RARE_CHARACTERS if sp.piece_to_id(ch) == UNK_ID]


# ---------------------------------------------------------------------------------------------------
# Chat rows

#: LINE's conversation template (config/families/line.yaml) with the fields
#: :func:`hf2mlc.families.render_prompt` reads.  The demo holds its own copy because the package does not
#: ship config/; a test renders dialogues with both and requires the same text.
CHAT_TEMPLATE: dict[str, Any] = {
    "name": "line",
    "system_template": "{system_message}",
    "system_message": "",
    "add_role_after_system_message": True,
    "roles": {"user": USER, "assistant": SYSTEM},
    "seps": ["\n"],
    "role_content_sep": ": ",
    "role_empty_sep": ": ",
}
#: Target id that the loss ignores (padding).
IGNORE_ID = -100


def chat_example(encode: Callable[[str], list[int]], text: str) -> tuple[list[int], list[int]]:
    """(input ids, target ids) of one dialogue, as MLC's engine shows the chat to the model.

    The inputs are the dialogue encoded whole with nothing in front: for each answer, they begin with
    exactly the ids the engine sends for that turn (``render_prompt`` of the history so far, encoded, no
    special token).  ``targets[t]`` is what the model should emit after ``inputs[: t + 1]``: the next input
    id, except after the last id of each answer, where it is ``</s>``.  The engine stops at ``</s>`` and
    keeps it out of the history, so the next turn's prompt continues that answer with the template's
    ``\\n`` (an input the model never has to predict); ``</s>`` is never an input.  Raises RuntimeError if
    an answer does not start and end on token boundaries of the whole encoding (then no row could match
    inference), ValueError if the text is not what the template renders.
    """
    inputs = list(encode(text))
    history: list[tuple[str, str]] = []
    rendered, ends = "", []
    for question, answer in split_exchanges(text):
        history.append(("user", question))
        prompt = render_prompt(CHAT_TEMPLATE, history)
        prompt_ids, answered_ids = list(encode(prompt)), list(encode(prompt + answer))
        if inputs[: len(prompt_ids)] != prompt_ids or inputs[: len(answered_ids)] != answered_ids:
            raise RuntimeError(f"the demo tokenizer encodes a turn of this dialogue differently in context: {text!r}")
        rendered = prompt + answer
        ends.append(len(answered_ids))
        history.append(("assistant", answer))
    if rendered != text:
        raise ValueError(f"dialogue is not the {CHAT_TEMPLATE['name']} template's rendering of its turns: {text!r}")
    targets = inputs[1:] + [EOS_ID]
    for end in ends:
        targets[end - 1] = EOS_ID
    return inputs, targets


# ---------------------------------------------------------------------------------------------------
# Files that describe the model


def model_config() -> dict[str, Any]:
    """config.json as LINE's is written: legacy rotary keys, bos = eos = 2, no pad id."""
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "bos_token_id": EOS_ID,
        "eos_token_id": EOS_ID,
        "hidden_act": "gelu",
        "hidden_size": HIDDEN_SIZE,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE_SIZE,
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": MAX_POSITIONS,
        "num_attention_heads": NUM_HEADS,
        "num_hidden_layers": NUM_LAYERS,
        "rotary_emb_base": 10000,
        "rotary_pct": 1.0,
        "tie_word_embeddings": True,
        "torch_dtype": "float16",
        "use_cache": True,
        "use_parallel_residual": False,
        "vocab_size": VOCAB_SIZE,
    }


def tokenizer_config() -> dict[str, Any]:
    """tokenizer_config.json as LINE's: T5Tokenizer over spiece.model, no T5 sentinel ``<extra_id_*>`` tokens."""
    return {
        "additional_special_tokens": [],
        "bos_token": "<s>",
        "cls_token": "<cls>",
        "eos_token": "</s>",
        "extra_ids": 0,
        "mask_token": "<mask>",
        "pad_token": "<pad>",
        "sep_token": "<sep>",
        "sp_model_kwargs": {},
        "tokenizer_class": "T5Tokenizer",
        "unk_token": "<unk>",
    }


def special_tokens_map() -> dict[str, str]:
    """special_tokens_map.json as LINE's -sft repo: pad is ``</s>`` (id 2) here, unlike tokenizer_config."""
    return {
        "bos_token": "<s>",
        "cls_token": "<cls>",
        "eos_token": "</s>",
        "mask_token": "<mask>",
        "pad_token": "</s>",
        "sep_token": "<sep>",
        "unk_token": "<unk>",
    }


def generation_config() -> dict[str, Any]:
    return {"_from_model_config": True, "bos_token_id": EOS_ID, "eos_token_id": EOS_ID}


def _model_card(stats: dict[str, Any]) -> str:
    return f"""---
language: ja
license: apache-2.0
tags:
- gpt_neox
- hf2mlc-demo
---
# hf2mlc demo GPT-NeoX

A tiny Japanese chat model that hf2mlc generates and trains itself (seed {stats["seed"]}) so that the workflow
runs offline. It is **not** a useful language model: it only knows the project's template dialogues. It copies
the architecture options and files of `line-corporation/japanese-large-lm-3.6b-instruction-sft`, so that what
breaks a conversion of LINE's model breaks here too.

| | |
| --- | --- |
| architecture | GPTNeoXForCausalLM: hidden {HIDDEN_SIZE}, {NUM_LAYERS} layers, {NUM_HEADS} heads, intermediate {INTERMEDIATE_SIZE} |
| options (as LINE) | tied embeddings (no `embed_out.weight` stored), rotary_pct 1.0, use_parallel_residual false, gelu, float16 |
| parameters | {stats["parameters"]:,} |
| tokenizer | `spiece.model`: SentencePiece unigram, {VOCAB_SIZE} pieces, byte fallback, nmt_nfkc, `\\n` as piece {NEWLINE_ID} |
| special ids | `<unk>` 0, `<s>` 1, `</s>` 2, `<pad>` 3, `<mask>` 4, `<cls>` 5, `<sep>` 6; bos = eos = 2 |
| training | {stats["train_dialogues"]} generated dialogues ({stats["train_tokens"]:,} tokens), {TRAIN_STEPS} steps of {BATCH_SIZE} whole dialogues, each from its first token, padded |
| held-out perplexity | {stats["heldout_perplexity"]:.3f} on {stats["heldout_dialogues"]} dialogues in `heldout.txt` (uniform: {VOCAB_SIZE}) |

Prompt format (as LINE's card and hf2mlc's `line` conversation template): `{USER}: …\\n{SYSTEM}: `, encoded
with no special token in front; the model ends every answer with `</s>` (id 2), the template's stop token,
and a later turn's prompt carries earlier answers without it (`{USER}: q1\\n{SYSTEM}: a1\\n{USER}: q2\\n{SYSTEM}: `).
`heldout.txt` holds dialogues separated by blank lines. Its perplexity scores each dialogue encoded whole
with nothing in front: every token after the first is predicted, except that `</s>` is the target after
each answer (where the text goes on with `\\n`) and after the last one.
Tokenize with sentencepiece (`spiece.model`): the fast tokenizer transformers 5 derives for `T5Tokenizer`
has no byte fallback and turns newlines into spaces.
"""


# ---------------------------------------------------------------------------------------------------
# Training


@contextlib.contextmanager
def _deterministic_torch(seed: int) -> Iterator[None]:
    """Fixed seeds, threads and deterministic kernels for the block; the caller's settings come back after."""
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(TORCH_THREADS)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            torch.set_num_threads(threads)


def _learning_rate(step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < WARMUP_STEPS:
        return PEAK_LR * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, TRAIN_STEPS - WARMUP_STEPS)
    return PEAK_LR * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _batches(lengths: list[int], generator: Any, batch_size: int = BATCH_SIZE) -> Iterator[list[int]]:
    """Row indices, a batch at a time, forever: each epoch in a fresh random order, cut into pools of
    BUCKET_BATCHES batches whose rows are sorted by length (so a batch pads little), batches shuffled again."""
    import torch

    pool = batch_size * BUCKET_BATCHES
    while True:
        order = torch.randperm(len(lengths), generator=generator).tolist()
        batches = []
        for start in range(0, len(order), pool):
            rows = sorted(order[start : start + pool], key=lambda row: lengths[row])
            batches += [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        for index in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[index]


def _padded(rows: list[tuple[list[int], list[int]]], pad_id: int = PAD_ID) -> tuple[Any, Any, Any]:
    """(input ids, attention mask, targets) of rows padded on the right; padding is masked and ignored."""
    import torch

    width = max(len(inputs) for inputs, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE_ID, dtype=torch.long)
    for row, (inputs, wanted) in enumerate(rows):
        input_ids[row, : len(inputs)] = torch.tensor(inputs)
        mask[row, : len(inputs)] = 1
        targets[row, : len(wanted)] = torch.tensor(wanted)
    return input_ids, mask, targets


def _nll(model: Any, rows: list[tuple[list[int], list[int]]], reduction: str, pad_id: int = PAD_ID) -> Any:
    import torch.nn.functional as F

    input_ids, mask, targets = _padded(rows, pad_id)
    logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_ID, reduction=reduction)


def _train(
    model: Any,
    examples: list[tuple[list[int], list[int]]],
    seed: int,
    *,
    steps: int = TRAIN_STEPS,
    batch_size: int = BATCH_SIZE,
    pad_id: int = PAD_ID,
) -> float:
    """Train on batches of whole dialogues (:func:`chat_example` rows); return the mean loss of the last 20 steps."""
    import torch
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(seed)
    batches = _batches([len(inputs) for inputs, _ in examples], generator, batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PEAK_LR, betas=(0.9, 0.95), weight_decay=0.01)
    model.train()
    recent: list[float] = []
    bar = tqdm(range(steps), desc="[hf2mlc demo] train", file=sys.stderr, mininterval=1.0, leave=False)
    for step in bar:
        rows = [examples[index] for index in next(batches)]
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step)
        loss = _nll(model, rows, "mean", pad_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        recent = (recent + [loss.item()])[-20:]
        bar.set_postfix(loss=f"{recent[-1]:.3f}", refresh=False)
    bar.close()
    return sum(recent) / len(recent)


def heldout_perplexity(model: Any, examples: list[tuple[list[int], list[int]]], pad_id: int = PAD_ID) -> float:
    """exp(mean NLL) of every target of the held-out :func:`chat_example` rows.

    That is, each dialogue encoded whole with nothing in front, every token after its first predicted,
    with ``</s>`` as the target after each answer (where the text continues with ``\\n``) and after the
    last.  This is the definition evaluations of the demo use, so numbers from different runtimes compare.
    """
    import torch

    model.eval()
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for row in examples:
            total_nll += _nll(model, [row], "sum", pad_id).item()
            total_tokens += len(row[1])
    return math.exp(total_nll / total_tokens)


def _build_model(config_dir: Path, tied: bool = True) -> Any:
    """A freshly initialised model from the config.json we wrote (so the legacy keys are what is read)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig.from_pretrained(config_dir)
    config.dtype = "float32"
    model = GPTNeoXForCausalLM(config).float()
    if tied and model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        raise RuntimeError("transformers did not tie embed_out to embed_in for tie_word_embeddings=true")
    return model


def _float16_state(model: Any) -> dict[str, Any]:
    """The checkpoint as LINE stores it: float16, and no output projection (it is tied to embed_in).

    transformers 5 calls the output projection ``lm_head`` (older checkpoints: ``embed_out``); every
    stored tensor is under ``gpt_neox.``, with the names LINE's checkpoint uses.
    """
    import torch

    state = {
        name: tensor.detach().to(torch.float16).contiguous()
        for name, tensor in model.state_dict().items()
        if name not in ("lm_head.weight", "embed_out.weight")
    }
    stray = [name for name in state if not name.startswith("gpt_neox.")]
    if stray:
        raise RuntimeError(f"unexpected tensors in the demo checkpoint: {stray}")
    return state


# ---------------------------------------------------------------------------------------------------
# Entry point


def make_demo_model(out_dir: Path, *, seed: int = 0, variant: str | None = None) -> dict[str, Any]:
    """Write the demo model (Hugging Face layout) to ``out_dir`` and return statistics about it.

    ``variant``: one of :data:`hf2mlc.demo_variants.VARIANTS` (a model shaped like another family) instead.

    The directory appears only when complete (``atomic_output_dir``); an existing one is replaced.  The
    returned statistics (sizes, losses, perplexities, timings) are JSON-serialisable for a manifest;
    timings are the only values that differ between runs.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(
            f"{out_dir}: exists and is not a directory; remove it or choose another output path for the demo model."
        )
    if variant is not None:
        from .demo_variants import make_variant

        return make_variant(out_dir, variant, seed=seed)

    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> float:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now
        return timings[name]

    train_text, heldout_text = demo_corpus(seed)  # also rejects a bad seed, before any heavy work
    _progress(
        f"1/4 corpus: {len(train_text)} training and {len(heldout_text)} held-out dialogues ({lap('corpus'):.1f} s)"
    )

    import sentencepiece as spm

    spiece = train_tokenizer(train_text)
    sp = spm.SentencePieceProcessor(model_proto=spiece)
    byte_fallback_chars = _check_tokenizer(sp)
    train_rows = [chat_example(sp.encode, text) for text in train_text]
    heldout_rows = [chat_example(sp.encode, text) for text in heldout_text]
    _progress(
        f"2/4 tokenizer: {sp.get_piece_size()} pieces, {len(byte_fallback_chars)} rare characters left to "
        f"byte fallback ({lap('tokenizer'):.1f} s)"
    )

    import safetensors.torch

    stats: dict[str, Any] = {"seed": seed, "vocab_size": VOCAB_SIZE}
    with atomic_output_dir(out_dir) as tmp:
        write_json(tmp / "config.json", model_config())
        with _deterministic_torch(seed):
            model = _build_model(tmp)
            initial = heldout_perplexity(model, heldout_rows)
            train_loss = _train(model, train_rows, seed)
            state = _float16_state(model)
            # Measure the weights as stored: float16 values, computed in float32.
            result = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
            if result.unexpected_keys or set(result.missing_keys) - {"lm_head.weight", "embed_out.weight"}:
                raise RuntimeError(f"float16 weights do not fit the model: {result}")
            perplexity = heldout_perplexity(model, heldout_rows)
        stats.update(
            parameters=sum(p.numel() for p in model.parameters()),
            train_dialogues=len(train_text),
            heldout_dialogues=len(heldout_text),
            train_tokens=sum(len(inputs) for inputs, _ in train_rows),
            heldout_tokens=sum(len(targets) for _, targets in heldout_rows),
            steps=TRAIN_STEPS,
            final_train_loss=round(train_loss, 4),
            initial_heldout_perplexity=round(initial, 3),
            heldout_perplexity=round(perplexity, 3),
            byte_fallback_characters=byte_fallback_chars,
        )
        _progress(
            f"3/4 train: {TRAIN_STEPS} steps, loss {train_loss:.3f}, held-out perplexity "
            f"{initial:.1f} -> {perplexity:.2f} (uniform {VOCAB_SIZE}) ({lap('train'):.1f} s)"
        )

        safetensors.torch.save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "spiece.model").write_bytes(spiece)
        write_json(tmp / "tokenizer_config.json", tokenizer_config())
        write_json(tmp / "special_tokens_map.json", special_tokens_map())
        write_json(tmp / "generation_config.json", generation_config())
        write_dialogues(tmp / "heldout.txt", heldout_text)
        (tmp / "README.md").write_text(_model_card(stats), encoding="utf-8", newline="\n")
        for path in tmp.iterdir():
            path.chmod(0o644)  # safetensors writes 0600; the model is meant to be shared
        written = sorted(p.name for p in tmp.iterdir())
        if tuple(written) != MODEL_FILES:
            raise RuntimeError(f"demo model files {written} differ from {MODEL_FILES}")
    _progress(f"4/4 write: {out_dir} ({lap('write'):.1f} s)")
    stats["timings"] = timings
    return stats
