"""pscl-export: a TorchScript file that plain PyTorch runs, without pscl, with the same output."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from conftest import BACKBONE, CLASSES, _backbone, run_exported_without_pscl
from pscl.predict.export import run
from pscl.models.model_file import load_trained_model, save_model


def test_the_torchscript_export_runs_without_pscl_and_gives_the_same_output(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    save_model(run_dir / "model.pt", _backbone(seed=3), BACKBONE, CLASSES, (0.55,), (0.2,), "moco", {})
    assert run([str(run_dir)]) == 0
    exported = run_dir / "export" / "model.ts.pt"
    contract = json.loads((run_dir / "export" / "model.ts.json").read_text())
    assert contract["class_names"] == list(CLASSES)
    assert contract["input"]["mean"] == [0.55] and contract["input"]["std"] == [0.2]
    assert "(B, 1, H, W)" in contract["input"]["shape"] and "65535" in contract["input"]["scaling"]

    x = torch.rand(2, 1, 52, 70)  # [0, 1] images of a size the UNet pads inside
    (exported_logits,) = run_exported_without_pscl(exported, [x], tmp_path)
    model = load_trained_model(run_dir)
    with torch.no_grad():
        expected = model.backbone((x - 0.55) / 0.2)
    assert exported_logits.shape == (2, 3, 52, 70)
    assert torch.allclose(exported_logits, expected, atol=1e-4)
    assert torch.equal(exported_logits.argmax(1), expected.argmax(1))

    assert run([str(run_dir)]) == 2  # never overwritten silently
    assert "already exists" in capsys.readouterr().err
