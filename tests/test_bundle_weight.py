"""bundle_weight: false — the app downloads the weights from the published Hub repo (MLC's model_url)
instead of carrying them, as MLC's packager does for a model given as HF://owner/name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf2mlc.errors import UserError
from hf2mlc.package import HUB_ONLY_DIR, PackageInputs, hub_folder, make_package
from hf2mlc.spec import PackageSpec

REPO_ID = "tester/hf2mlc-demo-gpt-neox-q4f16_0-MLC"
MODEL_ID = "hf2mlc-demo-gpt-neox-q4f16_0-MLC"


def _spec(**kw) -> PackageSpec:
    return PackageSpec(device="iphone", model_id=MODEL_ID, name="hf2mlc-demo-gpt-neox", source="demo", family="line",
                       quantization="q4f16_0", **kw)


def test_bundle_weight_false_needs_a_published_repo() -> None:
    with pytest.raises(UserError, match=r"add iphone to upload.devices"):
        _spec(bundle_weight=False, hub_repo=None)


@pytest.mark.slow
def test_app_config_points_at_the_hub_repo(demo_workflow: dict, tmp_path: Path) -> None:
    results = demo_workflow["work"] / "results"
    inputs = PackageInputs(
        model=results / "download" / "demo",
        patch=results / "patch" / "demo",
        tokenizer=results / "tokenizer" / "demo",
        weights=results / "weights" / "demo" / "q4f16_0",
        library=results / "compile" / "demo" / "iphone-q4f16_0",
        evaluate=results / "evaluate" / "demo" / "q4f16_0",
    )
    out = tmp_path / "package"
    out.mkdir()
    make_package(inputs, out, _spec(bundle_weight=False, hub_repo=REPO_ID))

    (entry,) = json.loads((out / "bundle" / "mlc-app-config.json").read_text(encoding="utf-8"))["model_list"]
    assert entry["model_url"] == f"https://huggingface.co/{REPO_ID}" and "model_path" not in entry
    assert entry["model_id"] == MODEL_ID and entry["estimated_vram_bytes"] > 0
    (pkg,) = json.loads((out / "mlc-package-config.json").read_text(encoding="utf-8"))["model_list"]
    assert pkg["bundle_weight"] is False and pkg["model"] == f"HF://{REPO_ID}"
    older = json.loads((out / "app-config.json").read_text(encoding="utf-8"))
    assert older["model_list"] == [{"model_url": f"https://huggingface.co/{REPO_ID}", "local_id": MODEL_ID}]
    # No weights in the app bundle; the Hub folder still gets every file the bundled build ships.
    assert [p.name for p in (out / "bundle").iterdir()] == ["mlc-app-config.json"]
    bundled = results / "package" / "demo" / "iphone" / "bundle" / MODEL_ID
    hub_only = out / HUB_ONLY_DIR / MODEL_ID
    assert sorted(p.name for p in hub_only.iterdir()) == sorted(p.name for p in bundled.iterdir())
    for name in ("tensor-cache.json", "params_shard_0.bin"):
        assert (hub_only / name).read_bytes() == (bundled / name).read_bytes()
    (out / "manifest.json").write_text("{}", encoding="utf-8")  # hub_folder carries the stage's manifest along
    with hub_folder(out) as folder:
        assert (folder / "tensor-cache.json").is_file() and (folder / "mlc-chat-config.json").is_file()
        assert (folder / "README.md").is_file() and any((folder / "lib").iterdir())
