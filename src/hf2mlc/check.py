"""Is the compiled model right? The host library against the float32 reference, on the numbers it holds.

:func:`check_host_build` runs a prefill and a few decode steps of the host library and compares its logits
with :mod:`hf2mlc.reference`'s streaming float32 forward on the **same numbers** (for a quantized build,
the dequantized weights of its tensor cache: :class:`hf2mlc.reference.TensorCacheWeights`), one layer's
weights in memory at a time. A relative error above the bound fails the check, and the iPhone compile
waits on the check, so a wrong library never reaches a device. :func:`dequantized_reference` puts the same
numbers into transformers' model, whole in memory: what the tests hold the library and the streaming
forward pass to. What quantization *cost* is measured elsewhere (:mod:`hf2mlc.evaluate`).
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .model.gpt_neox.config import GPTNeoXConfig
from .progress import bar

#: Decode steps compared by the check (after a prefill of the rest of the prompt).
CHECK_DECODE_STEPS = 4
CHECK_TOKENS = 40


def _torch():
    import torch

    return torch


def original_reference(model_dir: Path):
    """The checkpoint as transformers loads it, in float32 (the gold standard)."""
    torch = _torch()
    from transformers import GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    return model.eval()


def dequantized_reference(model_dir: Path, weights_dir: Path, quantization: str):
    """transformers' GPT-NeoX holding exactly the numbers of a tensor cache: the check's own weight source
    (:class:`hf2mlc.reference.TensorCacheWeights`: dequantized, qkv order undone), one tensor at a time.

    The numbers are the check's; the forward pass is transformers', not the streaming reference's: the
    tests hold the library and the streaming reference to it. Tensors are copied in one at a time into the
    loaded float32 model, so memory stays at the model plus one tensor.
    """
    torch = _torch()

    from .reference import TensorCacheWeights

    model = original_reference(model_dir)
    output = model.get_output_embeddings()
    if output.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr():
        # Tied in transformers, separate in MLC's layout: give the output projection its own tensor.
        output.weight = torch.nn.Parameter(output.weight.detach().clone())
    source = TensorCacheWeights(weights_dir, GPTNeoXConfig.from_file(model_dir), quantization)
    for name, target in model.named_parameters():
        array = source("embed_out.weight" if target is output.weight else name)
        if tuple(target.shape) != array.shape:
            raise RuntimeError(f"{name}: cache shape {array.shape} does not match transformers' {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(torch.from_numpy(array))
    return model


def transformers_logits(model, ids: list[int]) -> np.ndarray:
    torch = _torch()
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].float().numpy()


# ---------------------------------------------------------------- the check


def _rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def check_host_build(
    model_dir: Path, weights_dir: Path, lib_path: Path, quantization: str, *, evaluation_text: str, max_rel_error: float
) -> dict[str, Any]:
    """Prefill + decode logits of the host library against the streaming float32 reference on the same
    numbers (the dequantized tensor cache for a quantized build, the checkpoint otherwise); fail above the bound.

    The reference streams the weights layer by layer (:mod:`hf2mlc.reference`): one layer's float32 weights
    in memory, not the whole model, and no wait for the evaluation's reference on the whole text.
    """
    from .evaluation_text import load_evaluation_text
    from .quantization import get_quantization
    from .reference import TensorCacheWeights, stream_forward
    from .runtime import Engine

    text = load_evaluation_text(model_dir, evaluation_text, max_tokens=CHECK_TOKENS, max_len=CHECK_TOKENS)
    ids = text.rows[0][0]
    if len(ids) <= CHECK_DECODE_STEPS + 1:
        raise UserError(f"{model_dir}: the first document of evaluation text {evaluation_text!r} is too short for the build check.")
    split = len(ids) - CHECK_DECODE_STEPS
    # Steps: load the library, prefill, each decode step, the streaming reference.
    with bar(desc=f"check {quantization}", total=len(ids) - split + 2) as steps:
        engine = Engine(lib_path, weights_dir)
        steps.update()
        logits = [engine.prefill(ids[:split])]
        steps.update()
        for token in ids[split:-1]:
            logits.append(engine.decode(token))
            steps.update()
        ours = np.stack(logits)
        del engine
        gc.collect()
        quantized = get_quantization(quantization).kind != "no-quant"
        source = TensorCacheWeights(weights_dir, GPTNeoXConfig.from_file(model_dir), quantization) if quantized else None
        ref = stream_forward(model_dir, np.asarray(ids[:-1]), weights=source)[split - 1 :]
        steps.update()
    per_position = [_rel_error(a, b) for a, b in zip(ours, ref)]
    worst = max(per_position)
    report = {
        "quantization": quantization,
        "reference": "hf2mlc streaming float32 reference, "
        + ("dequantized weights from the tensor cache" if quantized else "the checkpoint's weights"),
        "tokens": len(ids) - 1,
        "compared": "prefill of %d tokens, then %d decode steps" % (split, len(per_position) - 1),
        "rel_error_per_position": [round(e, 8) for e in per_position],
        "max_rel_error": round(worst, 8),
        "bound": max_rel_error,
        "argmax_agreement": float(np.mean(ours.argmax(-1) == ref.argmax(-1))),
        "passed": worst <= max_rel_error,
    }
    if not report["passed"]:
        raise UserError(
            f"{lib_path.name}: the host build's logits differ from the float32 reference by {worst:.3g} (relative), above "
            f"max_logit_rel_error {max_rel_error} (config/config.yaml). The compiled model is wrong for this "
            "checkpoint; nothing downstream (the iPhone build) will be made from it."
        )
    return report
