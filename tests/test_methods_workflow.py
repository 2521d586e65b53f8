"""The workflow builds the demo's iPhone bundle with every quantization method (issue 14), through
Snakemake and the real rules, and each bundle ships weights that MLC's decoder and the host engine read
the same way.

One copy of the session's demo run (tests/conftest.py ``demo_workflow``: its iPhone bundle is ``rtn``) is
rebuilt once per calibrated method with ``defaults.targets.iphone.method`` set by a ``--configfile``: the
rules rerun are convert_calibrated (its weights get their own ``q4f16_0-<method>`` directory), the host
check and evaluation of q4f16_0 (they follow the weights the device ships) and the package.  The iPhone
compile has no weights input, so the one library built by the session run serves every method; the
package's path names only the device, so each method's bundle is copied aside before the next run.

Oracles: the bundle's tensor cache decoded by the element-by-element numpy decoder written from MLC's
format (tests/test_calibrated.py ``mlc_dequantize``) must equal the project's dequantizer (the host
engine's arithmetic) bit for bit; the host engine, loading the bundle directory as shipped, must agree
with transformers holding exactly those decoded numbers.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from test_calibrated import mlc_dequantize
from workflow_helpers import snakemake

from hf2mlc.check import dequantized_reference, transformers_logits
from hf2mlc.model.gpt_neox.config import GPTNeoXConfig
from hf2mlc.quantization import METHODS, get_quantization
from hf2mlc.quantization.group import dequantize
from hf2mlc.runtime import Engine
from hf2mlc.tensor_cache import read_tensor_cache

QUANT = "q4f16_0"  # the demo iPhone target's format (config/config.yaml)
MODEL_ID = f"hf2mlc-demo-gpt-neox-{QUANT}-MLC"
#: The check's token ids: a prefill, then decode steps (any ids of the demo's vocabulary).
IDS = [5, 17, 42, 99, 7, 250, 31, 64, 128, 300, 12, 77, 501, 3, 88, 19]
DECODE_STEPS = 4


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.fixture(scope="module")
def method_bundles(demo_workflow: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Per method: the iPhone package as built, the weights directory it came from, and the Snakemake
    output of its run; plus the wall and CPU seconds of the reruns (printed: the suite's budget)."""
    root = tmp_path_factory.mktemp("methods")
    work = root / "wf"
    shutil.copytree(demo_workflow["work"], work, symlinks=True, ignore=shutil.ignore_patterns("locks", "incomplete"))
    package = work / "results" / "package" / "demo" / "iphone"
    built: dict[str, dict] = {}
    start, cpu = time.perf_counter(), _cpu_of_children()
    for method in METHODS:
        output = ""
        if method != "rtn":  # the session run built rtn's bundle (the default method)
            settings = root / f"{method}.yaml"
            settings.write_text(f"defaults:\n  targets:\n    iphone:\n      method: {method}\n", encoding="utf-8")
            proc = snakemake(work, "--cores", "2", "iphone_bundle", "--configfile", str(settings))
            output = proc.stdout + proc.stderr
        aside = root / "bundles" / method
        shutil.copytree(package, aside)
        suffix = "" if method == "rtn" else f"-{method}"
        built[method] = {"package": aside, "weights": work / "results" / "weights" / "demo" / f"{QUANT}{suffix}",
                         "output": output}
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_of_children() - cpu
    print(f"{len(METHODS) - 1} method reruns: {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU of Snakemake and its jobs")
    return {"work": work, "built": built, "seconds": seconds, "cpu_seconds": cpu_seconds}


def _bundle(entry: dict) -> Path:
    return entry["package"] / "bundle" / MODEL_ID


@pytest.mark.slow
def test_each_method_reruns_only_its_weights_and_what_reads_them(method_bundles: dict) -> None:
    work = method_bundles["work"]
    libraries = set()
    for method, entry in method_bundles["built"].items():
        manifest = json.loads((entry["package"] / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["params"]["method"] == method and manifest["params"]["quantization"] == QUANT
        card = (entry["package"] / "README.md").read_text(encoding="utf-8")
        assert f"quantization `{QUANT}` (codes and scales by `{method}`)" in card
        assert json.loads((entry["package"] / "quality-gate.json").read_text(encoding="utf-8"))["passed"] is True
        weights = json.loads((entry["weights"] / "manifest.json").read_text(encoding="utf-8"))
        assert weights["stats"]["method"] == method, entry["weights"]
        # The bundle ships exactly that method's weights.
        for shard in sorted(entry["weights"].glob("params_shard_*.bin")):
            assert (_bundle(entry) / shard.name).read_bytes() == shard.read_bytes(), (method, shard.name)
        if method != "rtn":
            assert "rule convert_calibrated:" in entry["output"] and "rule compile:" not in entry["output"], method
        libraries.add(tuple((p.name, p.read_bytes()) for p in sorted((entry["package"] / "lib").iterdir())))
    assert len(libraries) == 1  # one iPhone library serves every method
    assert sorted(p.name for p in (work / "results" / "weights" / "demo").iterdir()) == sorted(
        ["q0f16", QUANT] + [f"{QUANT}-{m}" for m in METHODS if m != "rtn"])


@pytest.mark.slow
def test_every_bundle_decodes_with_mlc_arithmetic_to_what_the_host_engine_computes(method_bundles: dict) -> None:
    work = method_bundles["work"]
    model_dir = work / "results" / "download" / "demo"
    config = GPTNeoXConfig.from_file(model_dir)
    q = get_quantization(QUANT)
    lib = next((work / "results" / "compile" / "demo" / f"host-{QUANT}").glob("*.so"))
    decoded_by_method, logits_by_method = {}, {}
    for method, entry in method_bundles["built"].items():
        cache = read_tensor_cache(_bundle(entry))
        decoded = {}
        for name in (n for n in cache if n.endswith(".q_weight")):
            base = name.removesuffix(".q_weight")
            k = config.intermediate_size if base.endswith("dense_4h_to_h") else config.hidden_size
            q_weight, q_scale = cache[name], cache[f"{base}.q_scale"]
            embedding = base == "gpt_neox.embed_in"  # gathered rows: never transposed
            # The decoder undoes the "KN" layout of linears; the embedding is stored [V, H] in every layout.
            kn_embedding = embedding and q.linear_weight_layout == "KN"
            oracle = mlc_dequantize(q_weight.T if kn_embedding else q_weight, q_scale.T if kn_embedding else q_scale,
                                    QUANT, k)
            axis = 0 if q.linear_weight_layout == "KN" and not embedding else -1
            ours = dequantize(q_weight, q_scale, q, axis=axis, size=k)
            np.testing.assert_array_equal(ours.T if axis == 0 else ours, oracle, err_msg=f"{method} {base}")
            decoded[base] = oracle
        assert len(decoded) == 4 * config.num_hidden_layers + 2, sorted(decoded)  # 4 linears a layer, both embeddings
        decoded_by_method[method] = decoded

        engine = Engine(lib, _bundle(entry))  # the bundle directory as it ships, no change
        got = np.stack([engine.prefill(IDS[:-DECODE_STEPS])] + [engine.decode(t) for t in IDS[-DECODE_STEPS:-1]])
        del engine
        want = transformers_logits(dequantized_reference(model_dir, _bundle(entry), QUANT), IDS[:-1])[-DECODE_STEPS:]
        rel = float(np.abs(got - want).max() / np.abs(want).max())
        print(f"{method}: host engine vs transformers on the decoded weights: max rel. error {rel:.2e}")
        assert rel <= 0.01, method
        logits_by_method[method] = got
    # Each calibrated method really changed the codes or scales, and the engine computed with them.
    for method in METHODS:
        if method == "rtn":
            continue
        changed = [b for b, w in decoded_by_method[method].items() if not np.array_equal(w, decoded_by_method["rtn"][b])]
        assert len(changed) >= 4 * config.num_hidden_layers, (method, changed)
        assert not np.array_equal(logits_by_method[method], logits_by_method["rtn"]), method
