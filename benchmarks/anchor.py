"""The llama.cpp anchor: the same checkpoint through llama.cpp, one measurement per process.

    benchmarks/work/llama-venv/bin/python -m benchmarks.anchor TASK ARGS_JSON OUT_JSON

Runs in a virtual environment of its own (benchmarks/requirements-anchor.txt: llama-cpp-python built
from source, gguf), never in hf2mlc's: it imports nothing of hf2mlc, only numpy, gguf and llama_cpp.
Tasks:

* ``gguf``     the Hugging Face safetensors checkpoint as a float16 GGUF, written the way llama.cpp's
  ``convert_hf_to_gguf.py`` writes GPT-NeoX (fused QKV rows regrouped to [all q, all k, all v], 1-D
  tensors in float32, ``embed_out`` written out even when tied); a GGUF needs a vocabulary to load,
  so it gets a SentencePiece-style one of the checkpoint's size (3 special tokens, the 256 byte
  tokens, then placeholders): the benchmark feeds token ids, never text.
* ``quantize`` llama.cpp's Q4_0 quantizer (``llama_model_quantize``, what ``llama-quantize`` calls)
  on that GGUF with the given threads: the fp16 -> 4-bit step, timed like hf2mlc's conversion.
* ``speed``    prefill of a prompt and greedy decode steps with the given threads.
"""

from __future__ import annotations

import json
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import worker  # numpy only: the task runner, and the prompt hf2mlc's engine gets
from benchmarks.worker import prompt_ids

_DROPPED = ("attention.bias", "attention.masked_bias", "rotary_emb.inv_freq")


def _safetensors(model_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint as a read-only memory map (nothing is read until used)."""
    out: dict[str, np.ndarray] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        header.pop("__metadata__", None)
        dtypes = {"F16": np.float16, "F32": np.float32, "BOOL": np.bool_, "I64": np.int64}
        for name, entry in header.items():
            begin, end = entry["data_offsets"]
            out[name] = np.memmap(path, dtype=dtypes[entry["dtype"]], mode="r", offset=8 + length + begin,
                                  shape=tuple(entry["shape"]) or (1,))
            assert out[name].nbytes == end - begin
    return out


def task_gguf(args: dict[str, Any]) -> dict[str, Any]:
    import gguf

    model_dir, out = Path(args["model_dir"]), Path(args["out"])
    config = json.loads((model_dir / "config.json").read_text())
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    layers, vocab = config["num_hidden_layers"], config["vocab_size"]
    rotary = float(config.get("rotary_pct", config.get("partial_rotary_factor", 1.0)))
    tensors = {n: t for n, t in _safetensors(model_dir).items() if not n.endswith(_DROPPED)}
    if "embed_out.weight" not in tensors:  # tied: llama.cpp's GPT-NeoX graph reads an output matrix
        tensors["embed_out.weight"] = tensors["gpt_neox.embed_in.weight"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPTNEOX, layers)

    writer = gguf.GGUFWriter(out, "gptneox")
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_rope_dimension_count(int(rotary * (hidden // heads)))
    writer.add_head_count(heads)
    writer.add_parallel_residual(bool(config.get("use_parallel_residual", True)))
    writer.add_layer_norm_eps(float(config.get("layer_norm_eps", 1e-5)))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    tokens += [f"\u2581t{i}" for i in range(vocab - len(tokens))]
    types += [gguf.TokenType.NORMAL] * (vocab - len(types))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    def prepared(name: str, array: np.ndarray) -> np.ndarray:
        if ".query_key_value." in name:  # HF [head, (q|k|v), d] rows -> [(q|k|v), head, d]
            array = np.asarray(array).reshape(heads, 3, hidden // heads, -1).swapaxes(0, 1).reshape(array.shape)
        return np.ascontiguousarray(array, dtype=np.float16 if array.ndim == 2 else np.float32)

    plan = []
    for name, array in tensors.items():
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise KeyError(f"no GGUF name for {name}")
        dtype = np.float16 if array.ndim == 2 else np.float32
        plan.append((name, gguf_name, array))
        writer.add_tensor_info(gguf_name, array.shape, np.dtype(dtype), array.size * np.dtype(dtype).itemsize)
    start = time.perf_counter()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, _gguf_name, array in plan:  # one tensor in memory at a time
        writer.write_tensor_data(prepared(name, array))
    writer.close()
    return {"seconds": time.perf_counter() - start, "bytes": out.stat().st_size, "tensors": len(plan)}


def task_quantize(args: dict[str, Any]) -> dict[str, Any]:
    import llama_cpp

    Path(args["out"]).unlink(missing_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.nthread = int(args["threads"])
    start = time.perf_counter()
    status = llama_cpp.llama_model_quantize(args["source"].encode(), args["out"].encode(), params)
    seconds = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"llama_model_quantize returned {status}")
    return {"call_seconds": seconds, "output_bytes": Path(args["out"]).stat().st_size}


def task_speed(args: dict[str, Any]) -> dict[str, Any]:
    import llama_cpp

    start = time.perf_counter()
    model = llama_cpp.Llama(model_path=args["model"], n_threads=args["threads"], n_threads_batch=args["threads"],
                            n_ctx=512, n_batch=args["prompt_len"], n_ubatch=args["prompt_len"], verbose=False)
    load_seconds = time.perf_counter() - start
    ids = prompt_ids(args["vocab_size"], args["prompt_len"])
    prefill, decode, tokens = [], [], []
    for _ in range(args["repeats"]):
        model.reset()
        t = time.perf_counter()
        model.eval(ids)
        prefill.append(time.perf_counter() - t)
        run_tokens = []
        for _ in range(args["decode_tokens"]):
            token = int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(model.ctx, -1), shape=(model.n_vocab(),))))
            run_tokens.append(token)
            t = time.perf_counter()
            model.eval([token])
            decode.append(time.perf_counter() - t)
        tokens.append(run_tokens)
    return {"load_seconds": load_seconds, "greedy_tokens": tokens[0], "prefill_seconds": prefill, "decode_seconds": decode,
            "prefill_tokens_per_s": len(ids) / statistics.median(prefill),
            "decode_tokens_per_s": 1.0 / statistics.median(decode),
            "llama_cpp_python": llama_cpp.__version__, "system_info": llama_cpp.llama_print_system_info().decode()}


TASKS = {"gguf": task_gguf, "quantize": task_quantize, "speed": task_speed}


if __name__ == "__main__":
    sys.exit(worker.main(sys.argv[1:], TASKS))
