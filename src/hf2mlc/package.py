"""The bundle: MLC LLM's ``dist/`` layout, assembled from the stage outputs.

::

    <package>/
      bundle/
        mlc-app-config.json          # {"model_list": [{model_id, model_lib, model_path, estimated_vram_bytes}]}
        <model_id>/                  # what MLC's app loads: weights, tensor-cache.json, mlc-chat-config.json,
                                     # tokenizer.model or tokenizer.json, tokenizer_config.json
      hub/<model_id>/                # instead, with bundle_weight false: published only, and the app config
                                     # names it by model_url (https://huggingface.co/<upload repo>)
      lib/                           # the model library: <lib>.tar (+ libmodel_iphone.a / <lib>.dylib)
      mlc-package-config.json        # the input `mlc_llm package` would take to make the same bundle
      app-config.json                # the older app's form, as the 2023 write-up used it
      README.md                      # the model card (Hub front matter, model-index results)
      quality-gate.json              # the quality gate's verdict (hf2mlc.gate); upload refuses a failing one
      manifest.json                  # written by the stage: file digests, inputs, parameters, versions

Weights are hard-linked from the weights stage where the file system allows (a 3.6B model's 2 GB are not
copied twice), else copied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import gate, layout
from .card import model_card
from .errors import UserError
from .model.gpt_neox.config import GPTNeoXConfig
from .spec import PackageSpec
from .tensor_cache import CACHE_JSON, check_library_params

MLC_CHAT_CONFIG_VERSION = "0.1.0"
#: MLC's defaults for fields neither the family nor generation_config.json sets (mlc_chat_config.py).
SYSTEM_DEFAULTS = {
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "temperature": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "top_p": 1.0,
}
STATIC_LIB_NAME = {"iphone": "libmodel_iphone.a"}
#: Where a bundle with bundle_weight false keeps its model directory: published to the Hub, not in bundle/.
HUB_ONLY_DIR = "hub"
#: The upload's staging folder for ``results/package/<m>/<device>``: ``.<device>-hub.tmp-*`` beside it.
HUB_STAGING_SUFFIX = "-hub"
#: What MLC's packager turns ``HF://owner/name`` into for the app (mlc_llm/interface/package.py).
HUB_URL = "https://huggingface.co"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise UserError(f"{path}: missing; rerun the stage that makes it.") from err


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _dump_mlc_json(path: Path, obj: Any) -> None:
    """JSON as MLC's own tools write it (indent 2, insertion order, ASCII escapes), newline-terminated."""
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class PackageInputs:
    """The stage outputs a bundle is assembled from."""

    model: Path
    patch: Path
    tokenizer: Path
    weights: Path
    library: Path
    evaluate: Path

    def as_roles(self) -> dict[str, str]:
        """Role → path, as the package manifest records its inputs."""
        return {field.name: str(getattr(self, field.name)) for field in dataclasses.fields(self)}


def _tensor_cache_bytes(weights: Path) -> int:
    cache = _read_json(weights / CACHE_JSON)
    return sum(shard["nbytes"] for shard in cache["records"])


def estimated_vram_bytes(config: GPTNeoXConfig, param_bytes: int, context_window_size: int, prefill_chunk_size: int) -> int:
    """Parameters + a float16 KV cache for the whole context window + float32 activations of one prefill chunk.

    MLC's app compares this with the device's memory budget before loading a model.
    """
    kv_cache = 2 * config.num_hidden_layers * context_window_size * config.hidden_size * 2
    activations = prefill_chunk_size * (4 * config.hidden_size + config.intermediate_size) * 4
    logits = config.vocab_size * 4 * 2
    return int(param_bytes + kv_cache + activations + logits)


def mlc_chat_config(
    config: GPTNeoXConfig,
    *,
    quantization: str,
    context_window_size: int,
    prefill_chunk_size: int,
    ffn_out_dtype: str,
    conv_template: dict[str, Any],
    tokenizer_fields: dict[str, Any],
    generation: dict[str, Any],
    generation_config: dict[str, Any],
    active_vocab_size: int,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """mlc-chat-config.json, field by field as MLC's gen_config writes it.

    Sampling defaults: the family's (the model card's recommendation) first, then generation_config.json /
    config.json, then MLC's system defaults — the precedence MLC applies, with the family in front.
    """
    chat: dict[str, Any] = {
        "version": MLC_CHAT_CONFIG_VERSION,
        "model_type": "gpt_neox",
        "quantization": quantization,
        "model_config": config.mlc_model_config(
            context_window_size=context_window_size,
            prefill_chunk_size=prefill_chunk_size,
            ffn_out_dtype=ffn_out_dtype,
        ),
        "vocab_size": config.vocab_size,
        "context_window_size": context_window_size,
        "sliding_window_size": -1,
        "prefill_chunk_size": prefill_chunk_size,
        "attention_sink_size": -1,
        "tensor_parallel_shards": 1,
        "pipeline_parallel_stages": 1,
        "active_vocab_size": active_vocab_size,
    }
    for key in ("temperature", "presence_penalty", "frequency_penalty", "repetition_penalty", "top_p"):
        value = generation.get(key, generation_config.get(key))
        chat[key] = SYSTEM_DEFAULTS[key] if value is None else value
    chat["tokenizer_files"] = list(tokenizer_fields["tokenizer_files"])
    chat["tokenizer_info"] = dict(tokenizer_fields["tokenizer_info"])
    chat["conv_template"] = conv_template
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = generation_config.get(key)
        chat[key] = SYSTEM_DEFAULTS[key] if value is None else value
    chat["model_task"] = "chat"
    chat["embedding_metadata"] = None
    # Not read by MLC (unknown keys are ignored); the TVM runtime an app links must match this era.
    chat["hf2mlc"] = provenance
    return chat


def _source_card_metadata(model_dir: Path) -> dict[str, Any]:
    """The YAML front matter of the source model's README.md (license, language …), if any."""
    import yaml

    readme = model_dir / "README.md"
    if not readme.is_file():
        return {}
    text = readme.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return {}
    try:
        front = text.split("---", 2)[1]
        data = yaml.safe_load(front) or {}
    except (IndexError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def make_package(inputs: PackageInputs, out: Path, spec: PackageSpec) -> None:
    """Assemble the bundle for ``spec.device`` into ``out`` (an empty directory).

    What the bundle says about its library — context window, prefill chunk, quantization, ``model_lib`` —
    is read from the library's own lib-info.json (its ``_metadata()`` and build spec), so the bundle can
    never describe a library other than the one it ships.
    """
    from .manifest import tool_versions
    from .tokenizer.mlc import mlc_tokenizer_fields

    model_id = spec.model_id
    config = GPTNeoXConfig.from_file(inputs.model)
    overrides = _read_json(inputs.patch / layout.OVERRIDES)
    conv_template = _read_json(inputs.patch / layout.CONV_TEMPLATE)
    lib_info = _read_json(inputs.library / layout.LIB_INFO)
    evaluation = _read_json(inputs.evaluate / layout.EVALUATION_REPORT)
    library = lib_info["metadata"]
    if library["quantization"] != spec.quantization:
        raise UserError(
            f"{inputs.library}: the library is built for {library['quantization']}, the {spec.device} bundle is "
            f"{spec.quantization}; rerun the workflow so both come from config/config.yaml."
        )
    context_window_size = int(library["context_window_size"])
    prefill_chunk_size = int(library["prefill_chunk_size"])
    model_lib = lib_info["model_lib"]
    verdict = gate.verdict(spec.quality_gate, evaluation, f"{inputs.evaluate}/{layout.EVALUATION_REPORT}")
    gate.write_verdict(out, verdict)
    generation_config: dict[str, Any] = {}
    for name in ("config.json", "generation_config.json"):  # later files win, as in transformers
        path = inputs.model / name
        if path.is_file():
            generation_config.update({k: v for k, v in _read_json(path).items() if v is not None})

    # The model directory: in the app bundle, or (bundle_weight false) only on the Hub, where the app fetches it.
    model_dir = out / ("bundle" if spec.bundle_weight else HUB_ONLY_DIR) / model_id
    model_dir.mkdir(parents=True)
    (out / "bundle").mkdir(exist_ok=True)
    for src in sorted(inputs.weights.iterdir()):
        if src.name != layout.MANIFEST and not src.name.startswith(".") and src.is_file():
            _link_or_copy(src, model_dir / src.name)
    param_bytes = _tensor_cache_bytes(inputs.weights)
    check_library_params(inputs.weights, library["params"], f"{inputs.library} ({lib_info['files'][0]})")

    tokenizer_fields = mlc_tokenizer_fields(inputs.tokenizer)
    for name in tokenizer_fields["tokenizer_files"]:
        _link_or_copy(inputs.tokenizer / name, model_dir / name)
    parity = _read_json(inputs.tokenizer / layout.PARITY_REPORT)
    active_vocab_size = int(parity.get("vocab_size", config.vocab_size))

    versions = tool_versions()
    provenance = {"hf2mlc": versions["hf2mlc"], "apache-tvm": versions["apache-tvm"], "apache-tvm-ffi": versions["apache-tvm-ffi"]}
    chat = mlc_chat_config(
        config,
        quantization=library["quantization"],
        context_window_size=context_window_size,
        prefill_chunk_size=prefill_chunk_size,
        ffn_out_dtype=lib_info["spec"]["ffn_out_dtype"],
        conv_template=conv_template,
        tokenizer_fields=tokenizer_fields,
        generation=overrides.get("generation", {}),
        generation_config=generation_config,
        active_vocab_size=active_vocab_size,
        provenance=provenance,
    )
    _dump_mlc_json(model_dir / "mlc-chat-config.json", chat)

    lib_dir = out / "lib"
    lib_dir.mkdir()
    lib_files = []
    for rel in sorted(lib_info["files"]):
        src = inputs.library / Path(rel).name
        # MLC's iOS app links the model libraries as one static archive of this name.
        name = STATIC_LIB_NAME[spec.device] if src.suffix == ".a" and spec.device in STATIC_LIB_NAME else src.name
        _link_or_copy(src, lib_dir / name)
        lib_files.append(name)
    vram = estimated_vram_bytes(config, param_bytes, context_window_size, prefill_chunk_size)

    # Where the app finds the weights: in its bundle (model_path), or downloaded from the Hub (model_url).
    where = {"model_path": model_id} if spec.bundle_weight else {"model_url": f"{HUB_URL}/{spec.hub_repo}"}
    _dump_mlc_json(
        out / "bundle" / "mlc-app-config.json",
        {"model_list": [{"model_id": model_id, "model_lib": model_lib, **where, "estimated_vram_bytes": vram}]},
    )
    source = spec.source
    if not spec.bundle_weight:
        package_source = f"HF://{spec.hub_repo}"
    elif source.startswith("hf://"):
        package_source = source.replace("hf://", "HF://").split("@")[0]
    else:
        package_source = f"bundle/{model_id}"
    _dump_mlc_json(
        out / "mlc-package-config.json",
        {
            "device": spec.device,
            "model_list": [
                {
                    "model": package_source,
                    "model_id": model_id,
                    "estimated_vram_bytes": vram,
                    "bundle_weight": spec.bundle_weight,
                    "overrides": {
                        "context_window_size": context_window_size,
                        "prefill_chunk_size": prefill_chunk_size,
                    },
                    "model_lib": model_lib,
                }
            ],
        },
    )
    _dump_mlc_json(
        out / "app-config.json",
        {
            "model_libs": [model_lib],
            "model_list": [{"model_url": where.get("model_url", package_source), "local_id": model_id}],
            "add_model_samples": [],
        },
    )
    card = model_card(
        settings=spec.as_params(),
        chat_config=chat,
        evaluation=evaluation,
        source_metadata=_source_card_metadata(inputs.model),
        lib_files=lib_files,
        model_lib=model_lib,
        estimated_vram=vram,
        tokenizer=parity,
        source_commit=_source_commit(inputs.model),
        gate_verdict=verdict,
    )
    (out / "README.md").write_text(card, encoding="utf-8")


def _source_commit(model_dir: Path) -> str | None:
    """The commit a Hub source's revision resolved to, as its download manifest recorded it."""
    from .manifest import read_manifest

    return read_manifest(model_dir).get("source", {}).get("commit")


@contextlib.contextmanager
def hub_folder(package: Path) -> Iterator[Path]:
    """The package laid out as a Hub model repo, in a temporary directory of hard links.

    MLC's apps download a model from its Hub repo's root (``model_url``), so the root holds the weights and
    mlc-chat-config.json; the card is README.md; the libraries go under lib/; the bundle's manifest rides
    along as hf2mlc-manifest.json for provenance.
    """
    homes = [package / where for where in ("bundle", HUB_ONLY_DIR) if (package / where).is_dir()]
    if not homes:
        raise UserError(f"{package}: no bundle/ or {HUB_ONLY_DIR}/ directory; rerun with `snakemake --forcerun package`.")
    model_dirs = [p for home in homes for p in home.iterdir() if p.is_dir()]
    if len(model_dirs) != 1:
        raise UserError(f"{package}: expected one model directory, found {len(model_dirs)}; rerun the package stage.")
    from .manifest import scratch_dir

    # A sibling of the package (hard links need the same file system), locked while the upload runs: one a
    # kill -9 left behind is removed by the next upload of this bundle.
    with scratch_dir(package.with_name(f"{package.name}{HUB_STAGING_SUFFIX}")) as root:
        for src in sorted(model_dirs[0].iterdir()):
            _link_or_copy(src, root / src.name)
        for src in sorted((package / "lib").iterdir()):
            _link_or_copy(src, root / "lib" / src.name)
        _link_or_copy(package / "README.md", root / "README.md")
        _link_or_copy(package / layout.MANIFEST, root / "hf2mlc-manifest.json")
        yield root
