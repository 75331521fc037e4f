"""pscl-export of smp runs: plain segmentation_models_pytorch files, TorchScript without pscl, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from conftest import BACKBONE, CLASSES, _backbone, run_exported_without_pscl, tree_hashes, with_trained_batchnorm
from pscl.data.transforms import normalise_whole_image
from pscl.models.model_file import load_trained_model, save_model
from pscl.models.smp_backbone import SmpBackbone
from pscl.predict.export import run
from pscl.predict.export_smp import scriptable_encoder

SMP_TARGET = "pscl.models.smp_backbone.SmpBackbone"
# (name, depth, decoder channels in the config, what smp.Unet gets, normalisation, mean, std)
CASES = {
    "depth5": ("resnet18", 5, [64, 32, 16, 16, 8], [64, 32, 16, 16, 8], "dataset", (0.55,), (0.2,)),
    "depth3": ("resnet18", 3, None, [64, 32, 16], "per_image", (0.0,), (1.0,)),
}


def _smp_backbone(name: str, depth: int, channels: list[int] | None, seed: int = 0) -> SmpBackbone:
    torch.manual_seed(seed)
    model = SmpBackbone(1, len(CLASSES), encoder_name=name, encoder_depth=depth, decoder_channels=channels)
    return with_trained_batchnorm(model)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Run folders holding only a model.pt: the two smp cases and a pscl UNet."""
    root = tmp_path_factory.mktemp("runs")
    folders = {}
    for case, (name, depth, channels, _, normalisation, mean, std) in CASES.items():
        config = {"_target_": SMP_TARGET, "arch": "unet", "encoder_name": name, "encoder_depth": depth,
                  "encoder_weights": None, "decoder_channels": channels}
        folders[case] = root / case
        save_model(folders[case] / "model.pt", _smp_backbone(name, depth, channels), config, CLASSES, mean, std,
                   "supervised", {}, normalisation=normalisation)
    folders["unet"] = root / "unet"
    save_model(folders["unet"] / "model.pt", _backbone(), BACKBONE, CLASSES, (0.55,), (0.2,), "moco", {})
    return folders


def _normalised(run_dir: Path, images: np.ndarray) -> torch.Tensor:
    """(B, H, W) [0, 1] grey images as the run's network takes them (normalised as pscl-predict does)."""
    model = load_trained_model(run_dir)
    batch = [normalise_whole_image(image[..., None], model.mean, model.std, model.normalisation) for image in images]
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float()


def _pscl_logits(run_dir: Path, images: np.ndarray) -> torch.Tensor:
    """pscl's own logits for (B, H, W) [0, 1] grey images."""
    with torch.no_grad():
        return load_trained_model(run_dir).backbone(_normalised(run_dir, images))


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_smp_export_loads_into_plain_smp_with_the_same_logits(runs: dict[str, Path], case: str, capsys) -> None:
    name, depth, _, widths, normalisation, mean, std = CASES[case]
    run_dir = runs[case]
    assert run([str(run_dir), "--format", "smp"]) == 0
    folder = run_dir / "export"
    assert sorted(p.name for p in folder.iterdir()) == ["encoder.pt", "export.json", "smp_model.pt"]
    record = json.loads((folder / "export.json").read_text())
    assert (record["encoder_name"], record["encoder_depth"], record["decoder_channels"]) == (name, depth, widths)
    assert (record["in_channels"], record["classes"], record["class_names"]) == (1, 3, list(CLASSES))
    assert record["normalisation"] == {**record["normalisation"], "kind": normalisation, "mean": list(mean),
                                       "std": list(std)}
    assert record["encoder_stride"] == 2 ** depth

    state = torch.load(folder / "smp_model.pt", weights_only=True)
    assert all(type(v) is torch.Tensor for v in state.values())
    assert {k.split(".")[0] for k in state} == {"encoder", "decoder", "segmentation_head"}
    unet = smp.Unet(encoder_name=name, encoder_depth=depth, encoder_weights=None, in_channels=1, classes=3,
                    decoder_channels=widths)
    unet.load_state_dict(state, strict=True)
    unet.eval()
    images = np.random.default_rng(0).random((2, 64, 96), dtype=np.float32)  # sides: multiples of 32
    expected = _pscl_logits(run_dir, images)
    x = torch.from_numpy(images)[:, None]
    with torch.no_grad():
        assert torch.allclose(unet(_normalised(run_dir, images)), expected, atol=1e-5)
        namespace: dict = {}
        exec(record["snippet"], namespace)  # the ready-to-paste snippet, as written
        pasted = namespace["model"](namespace["normalise"](x))
    assert torch.allclose(pasted, expected, atol=1e-4)

    encoder = smp.encoders.get_encoder(name, in_channels=1, depth=depth, weights=None)
    encoder.load_state_dict(torch.load(folder / "encoder.pt", weights_only=True), strict=True)
    namespace = {}
    exec(record["encoder_snippet"], namespace)
    trained = load_trained_model(run_dir).backbone.encoder.state_dict()
    loaded = [encoder.state_dict(), namespace["encoder"].state_dict()]
    if case == "depth3":  # (the smaller one) and as the encoder weights of a later pscl run
        later = SmpBackbone(1, 5, encoder_name=name, encoder_depth=depth, encoder_weights=str(folder / "encoder.pt"))
        loaded.append(later.encoder.state_dict())
    for weights in loaded:
        assert weights.keys() == trained.keys() and all(torch.equal(weights[k], trained[k]) for k in trained)

    if case == "depth3":
        capsys.readouterr()
        assert run([str(run_dir), "--format", "smp"]) == 2  # never overwritten silently
        assert "already exists" in capsys.readouterr().err
        assert run([str(run_dir), "--format", "smp", "--overwrite"]) == 0


def test_the_torchscript_export_of_an_smp_run_runs_without_pscl(runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir = runs["depth5"]
    out = tmp_path / "model.ts.pt"
    assert run([str(run_dir), "--out", str(out)]) == 0
    contract = json.loads((tmp_path / "model.ts.json").read_text())
    backbone = contract["backbone"]
    assert (backbone["class"], backbone["encoder_name"], backbone["encoder_depth"]) == (SMP_TARGET, "resnet18", 5)
    assert (backbone["decoder_channels"], backbone["in_channels"], backbone["classes"]) == ([64, 32, 16, 16, 8], 1, 3)
    assert contract["class_names"] == list(CLASSES) and contract["input"]["normalisation"] == "dataset"
    assert contract["input"]["mean"] == [0.55] and contract["input"]["std"] == [0.2]
    assert "multiple of 32" in contract["input"]["shape"]

    rng = np.random.default_rng(1)
    # padded by reflection (52 x 70), by replication (an image thinner than its padding), none (64 x 96)
    sizes = [(52, 70), (9, 40), (64, 96)]
    images = [rng.random((2, h, w), dtype=np.float32) for h, w in sizes]
    outputs = run_exported_without_pscl(out, [torch.from_numpy(i)[:, None] for i in images], tmp_path)
    for image, logits in zip(images, outputs):
        expected = _pscl_logits(run_dir, image)
        assert logits.shape == expected.shape == (2, 3, *image.shape[1:])
        assert torch.allclose(logits, expected, atol=1e-4)


def test_the_torchscript_export_keeps_per_image_standardisation(runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir = runs["depth3"]
    out = tmp_path / "model.ts.pt"
    assert run([str(run_dir), "--out", str(out)]) == 0
    scripted = torch.jit.load(out)
    image = np.random.default_rng(2).random((1, 30, 45), dtype=np.float32) * 0.3 + 0.4
    with torch.no_grad():
        logits = scripted(torch.from_numpy(image)[:, None])
    assert torch.allclose(logits, _pscl_logits(run_dir, image), atol=1e-4)


def test_an_encoder_that_cannot_be_scripted_is_traced_and_checked(monkeypatch) -> None:
    backbone = _smp_backbone("resnet18", 3, [32, 16, 8])

    def refuse(*args, **kwargs):
        raise RuntimeError("not scriptable")

    monkeypatch.setattr(torch.jit, "script", refuse)
    encoder = scriptable_encoder(backbone, None)
    assert isinstance(encoder, torch.jit.ScriptModule)
    x = torch.randn(1, 1, 40, 24)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(encoder(x), backbone.encoder(x)))


def test_format_smp_of_a_unet_run_is_one_message_and_writes_nothing(runs: dict[str, Path], tmp_path: Path,
                                                                   capsys) -> None:
    run_dir = runs["unet"]
    before = tree_hashes(run_dir, tmp_path)
    for extra in ([], ["--out", str(tmp_path / "smp")]):
        assert run([str(run_dir), "--format", "smp", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("pscl-export: error:") == 1 and "Traceback" not in err
        assert "needs a run trained with backbone=smp" in err and "--format torchscript" in err
        assert str(run_dir / "model.pt") in err
    assert tree_hashes(run_dir, tmp_path) == before and not (run_dir / "export").exists()


def test_format_smp_refuses_an_out_that_names_a_file(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    (tmp_path / "taken").write_text("mine")
    for out in (tmp_path / "model.pt", tmp_path / "taken"):
        assert run([str(runs["depth5"]), "--format", "smp", "--out", str(out)]) == 2
        assert "into a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert (tmp_path / "taken").read_text() == "mine"
