"""The nearcaipi command line, run as a user runs it: a separate process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from nearcaipi.config import PROJECT_ROOT


def run_cli(*arguments: str, home: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "NEARCAIPI_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "nearcaipi.cli", *arguments],
        capture_output=True,
        text=True,
        env=environment,
        cwd=PROJECT_ROOT,
        timeout=600,
        check=False,
    )


def test_train_predict_explain(plain_dataset: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    trained = run_cli(
        "train", "--data", str(plain_dataset), "--no-publish", "--output", str(checkpoint),
        "--epochs", "3", "--image-size", "48", home=tmp_path,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "test accuracy" in trained.stdout
    assert checkpoint.stat().st_size > 1_000_000

    image = plain_dataset / "nok" / "nok_00.png"
    predicted = run_cli("predict", str(image), "--checkpoint", str(checkpoint), home=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    path, label, p_nok = predicted.stdout.strip().split("\t")
    assert path == str(image)
    assert label in ("OK", "NOK")
    assert 0.0 <= float(p_nok.removeprefix("p_nok=")) <= 1.0

    overlay, saliency = tmp_path / "overlay.png", tmp_path / "map.npy"
    explained = run_cli(
        "explain", str(image), "--method", "rise", "--checkpoint", str(checkpoint), "--masks", "40",
        "--output", str(overlay), "--map", str(saliency), home=tmp_path,
    )  # fmt: skip
    assert explained.returncode == 0, explained.stderr
    assert "rise map of" in explained.stdout
    with Image.open(overlay) as picture:
        assert picture.size == (64, 48)
    assert np.load(saliency).shape == (48, 64)


def test_train_rejects_zero_epochs(plain_dataset: Path, tmp_path: Path) -> None:
    result = run_cli("train", "--data", str(plain_dataset), "--epochs", "0", home=tmp_path)

    assert result.returncode == 2
    assert "--epochs must be a positive whole number, got 0" in result.stderr


def test_train_on_missing_folder_fails_clearly(tmp_path: Path) -> None:
    result = run_cli("train", "--data", str(tmp_path / "absent"), home=tmp_path)

    assert result.returncode == 2
    assert f"configured data folder {tmp_path / 'absent'} does not exist" in result.stderr


def test_predict_without_model_names_the_fix(tmp_path: Path, plain_dataset: Path) -> None:
    result = run_cli("predict", str(plain_dataset / "ok" / "ok_00.png"), home=tmp_path)

    assert result.returncode == 2
    assert "no model version is promoted; run 'nearcaipi train' or pass --checkpoint" in result.stderr


def test_predict_skips_bad_files_and_fails(plain_dataset: Path, tmp_path: Path) -> None:
    network_checkpoint = tmp_path / "model.pt"
    from nearcaipi.models import ModelCard, build_network, save_checkpoint

    network, _ = build_network("resnet18", pretrained=False)
    network_checkpoint.write_bytes(save_checkpoint(network, ModelCard(backbone="resnet18", input_size=32)))
    text_file = tmp_path / "notes.jpg"
    text_file.write_text("not an image")
    good = plain_dataset / "ok" / "ok_00.png"

    result = run_cli("predict", str(text_file), str(good), "--checkpoint", str(network_checkpoint), home=tmp_path)

    assert result.returncode == 1
    assert f"skipped {text_file}: unsupported image format" in result.stderr
    assert result.stdout.startswith(f"{good}\t")


def test_camera_rejects_invalid_id(tmp_path: Path, plain_dataset: Path) -> None:
    result = run_cli("camera", str(plain_dataset / "ok"), "--camera-id", "bad id", home=tmp_path)

    assert result.returncode == 2
    assert "invalid --camera-id 'bad id'" in result.stderr
