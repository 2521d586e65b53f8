"""Other families' conventions end to end: the rinna-shaped and Pythia-shaped demo variants through the real
workflow (Snakemake, every stage) to an iPhone bundle, one run per variant.

rinna: SentencePiece without byte fallback, ``<NL>`` for newlines, eos id 3, the ``rinna`` family.
Pythia: the real GPT-NeoX-20B tokenizer.json (from ../shared/data; skipped where it is absent), the
``plain`` family.  The references: SentencePiece on the downloaded ``spiece.model``, the tokenizer.json
file itself, and MLC's published field names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece as spm
import yaml

from hf2mlc.tokenizer import bundle, proto
from shared_data import SHARED_DATA, shared_file
from workflow_helpers import copy_workflow, snakemake

pytestmark = pytest.mark.slow


def _run_variant(tmp: Path, variant: str, family: str) -> Path:
    work = copy_workflow(tmp / "work")
    config_path = work / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    # One quantization for both devices: one conversion, one host build and one evaluation serve both.
    targets = {"mac": {"quantization": config["defaults"]["targets"]["iphone"]["quantization"]}}
    # The demo entry's evaluation size, not the default's (10,000 tokens, the real model's): these tests
    # check the tokenizer and the bundle, and the evaluation only has to run for the package to be made.
    (demo,) = [entry for entry in config["models"] if entry["id"] == "demo"]
    evaluation = {key: demo["evaluation"][key] for key in ("max_tokens", "answer_tokens")}
    config["models"] = [{"id": variant, "source": f"demo:{variant}", "name": f"hf2mlc-demo-{variant}",
                         "family": family, "targets": targets, "evaluation": evaluation}]
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    snakemake(work, "--cores", "2", "iphone_bundle", env={"HF2MLC_SHARED_DATA": str(SHARED_DATA)})
    return work / "results"


def _bundle(results: Path, variant: str) -> tuple[Path, Path, dict]:
    """The iPhone package directory, its one model directory, and that model's mlc-chat-config.json."""
    package = results / "package" / variant / "iphone"
    (model_dir,) = [p for p in (package / "bundle").iterdir() if p.is_dir()]
    return package, model_dir, json.loads((model_dir / "mlc-chat-config.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rinna(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run_variant(tmp_path_factory.mktemp("rinna"), "rinna", "rinna")


@pytest.fixture(scope="module")
def pythia(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shared_file("tokenizers", "20B_tokenizer.json")
    return _run_variant(tmp_path_factory.mktemp("pythia"), "pythia", "plain")


def test_rinna_variant_bundle(rinna: Path) -> None:
    download = rinna / "download" / "rinna"
    sp = spm.SentencePieceProcessor(model_file=str(download / "spiece.model"))
    model = proto.read_sentencepiece(download / "spiece.model")
    assert not model.byte_fallback and model.kind("<NL>") == "user_defined"
    assert [sp.id_to_piece(i) for i in range(4)] == ["[PAD]", "<unk>", "<s>", "</s>"]
    assert json.loads((download / "config.json").read_text())["eos_token_id"] == 3

    report = json.loads((rinna / "tokenizer" / "rinna" / "parity-report.json").read_text(encoding="utf-8"))
    assert report["parity"] == 1.0 and report["shipped"]["file"] == "tokenizer.model"
    assert report["byte_fallback_tokens"] == 0 and report["unk_tokens"] > 0  # rare characters are <unk>

    package, model_dir, chat = _bundle(rinna, "rinna")
    assert (model_dir / "tokenizer.model").read_bytes() == (download / "spiece.model").read_bytes()
    assert not (model_dir / "tokenizer.json").exists()  # MLC would prefer it over tokenizer.model
    assert chat["tokenizer_files"] == ["tokenizer.model", "tokenizer_config.json"]
    assert chat["tokenizer_info"] == {"token_postproc_method": "byte_fallback", "prepend_space_in_encode": False,
                                      "strip_space_in_decode": False}
    template = chat["conv_template"]
    assert template["seps"] == ["<NL>"] and template["stop_token_ids"] == [3] and chat["vocab_size"] == 1024
    assert (package / "lib" / "libmodel_iphone.a").is_file()
    assert "## Tokenizer" in (package / "README.md").read_text(encoding="utf-8")
    # The bundle tokenizes the rinna prompt exactly as SentencePiece does, <NL> as one piece.
    prompt = "ユーザー: 日本のおすすめの観光地を教えてください。<NL>システム: "
    ids = bundle.bundle_tokenizer(model_dir).encode(prompt)
    assert ids == sp.encode(prompt) and sp.piece_to_id("<NL>") in ids


def test_pythia_variant_bundle(pythia: Path) -> None:
    download = pythia / "download" / "pythia"
    real = shared_file("tokenizers", "20B_tokenizer.json")
    assert (download / "tokenizer.json").read_bytes() == real.read_bytes()
    config = json.loads((download / "config.json").read_text())
    assert (config["use_parallel_residual"], config["rotary_pct"], config["tie_word_embeddings"]) == (True, 0.25, False)

    report = json.loads((pythia / "tokenizer" / "pythia" / "parity-report.json").read_text(encoding="utf-8"))
    assert report["parity"] == 1.0 and report["shipped"]["file"] == "tokenizer.json"

    package, model_dir, chat = _bundle(pythia, "pythia")
    assert (model_dir / "tokenizer.json").read_bytes() == real.read_bytes()
    assert chat["tokenizer_info"] == {"token_postproc_method": "byte_level", "prepend_space_in_encode": False,
                                      "strip_space_in_decode": False}
    assert chat["conv_template"]["name"] == "plain" and chat["conv_template"]["stop_token_ids"] == [0]
    assert chat["vocab_size"] == 50304
    assert (package / "lib" / "libmodel_iphone.a").is_file()
