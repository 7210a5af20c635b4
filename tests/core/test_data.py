"""Folder data sets: both layouts, stratified seeded splits, masks and the download path."""

from __future__ import annotations

import http.server
import io
import threading
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nearcaipi.data import (
    NOK,
    OK,
    DatasetError,
    SplitFractions,
    describe_splits,
    discover_samples,
    fetch_magnetic_tiles,
    load_mask,
    restore_splits,
    split_samples,
)


def test_magnetic_tiles_layout(magnetic_tiles: Path) -> None:
    samples = discover_samples(magnetic_tiles)

    labels = Counter(sample.label for sample in samples)
    assert labels[OK] == 952
    assert labels[NOK] == 392
    groups = Counter(sample.group for sample in samples)
    assert groups["Blowhole"] == 115
    assert groups["Fray"] == 32
    assert all(sample.mask_path is not None for sample in samples)


def test_magnetic_tile_masks_are_binarised(magnetic_tiles: Path) -> None:
    sample = next(sample for sample in discover_samples(magnetic_tiles) if sample.group == "Crack")
    with Image.open(sample.path) as image:
        width, height = image.size

    mask = load_mask(sample.mask_path, (height, width))

    assert mask.dtype == bool
    assert 0 < mask.mean() < 0.05


def test_plain_layout(plain_dataset: Path) -> None:
    samples = discover_samples(plain_dataset)

    assert len(samples) == 30
    assert sum(sample.label == NOK for sample in samples) == 10
    nok = next(sample for sample in samples if sample.label == NOK)
    assert nok.mask_path == plain_dataset / "masks" / f"{nok.path.stem}.png"
    assert all(sample.mask_path is None for sample in samples if sample.label == OK)


def test_unknown_layout_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="neither MT_<Class>/Imgs/ folders"):
        discover_samples(tmp_path)


def test_missing_folder_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        discover_samples(tmp_path / "absent")


def test_splits_are_stratified_and_seeded(magnetic_tiles: Path) -> None:
    samples = discover_samples(magnetic_tiles)

    splits = split_samples(samples, SplitFractions(), seed=7)
    again = split_samples(samples, SplitFractions(), seed=7)
    other = split_samples(samples, SplitFractions(), seed=8)

    assert describe_splits(splits, magnetic_tiles) == describe_splits(again, magnetic_tiles)
    assert describe_splits(splits, magnetic_tiles) != describe_splits(other, magnetic_tiles)
    assert sum(len(members) for members in splits.values()) == len(samples)
    assert len({sample.path for members in splits.values() for sample in members}) == len(samples)
    for name, fraction in SplitFractions().as_dict().items():
        fray = sum(sample.group == "Fray" for sample in splits[name])
        assert abs(fray - 32 * fraction) <= 1, name
        nok_share = sum(sample.label == NOK for sample in splits[name]) / len(splits[name])
        assert nok_share == pytest.approx(392 / 1344, abs=0.02), name


def test_recorded_splits_restore(plain_dataset: Path) -> None:
    splits = split_samples(discover_samples(plain_dataset), seed=0)
    recorded = describe_splits(splits, plain_dataset)

    restored = restore_splits(recorded, plain_dataset)

    assert {name: [s.path for s in members] for name, members in restored.items()} == {
        name: [s.path for s in members] for name, members in splits.items()
    }


def test_fractions_must_add_up_to_one() -> None:
    with pytest.raises(ValueError, match="add up to 1"):
        SplitFractions(train=0.5, validation=0.5, test=0.5, pool=0.0)


def test_fetch_unpacks_the_public_archive_layout(tmp_path: Path) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        for class_name in ("MT_Free", "MT_Crack"):
            pixels = io.BytesIO()
            Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(pixels, format="JPEG")
            bundle.writestr(f"Magnetic-tile-defect-datasets.-cc4eb53/{class_name}/Imgs/a.jpg", pixels.getvalue())
    payload = archive.getvalue()

    class ArchiveHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ArchiveHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/archive.zip"
        root = fetch_magnetic_tiles(tmp_path / "cache", url=url)
        again = fetch_magnetic_tiles(tmp_path / "cache", url="http://127.0.0.1:9/never-asked")
    finally:
        server.shutdown()

    assert root == again == tmp_path / "cache" / "magnetic-tiles"
    assert len(discover_samples(root)) == 2


def test_fetch_failure_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="set NEARCAIPI_DATA_DIR"):
        fetch_magnetic_tiles(tmp_path, url="http://127.0.0.1:9/archive.zip", timeout=2)


def test_plain_layout_reads_box_annotations(tmp_path: Path) -> None:
    for folder in ("ok", "nok", "masks"):
        (tmp_path / folder).mkdir()
    Image.fromarray(np.zeros((40, 50), dtype=np.uint8)).save(tmp_path / "ok" / "a.png")
    Image.fromarray(np.zeros((40, 50), dtype=np.uint8)).save(tmp_path / "nok" / "b.png")
    (tmp_path / "masks" / "b.xml").write_text(
        "<annotation><object><bndbox><xmin>5</xmin><ymin>10</ymin><xmax>14</xmax><ymax>11</ymax></bndbox></object>"
        "<object><bndbox><xmin>41</xmin><ymin>31</ymin><xmax>50</xmax><ymax>40</ymax></bndbox></object></annotation>"
    )

    nok = next(sample for sample in discover_samples(tmp_path) if sample.label == NOK)
    mask = load_mask(nok.mask_path, (40, 50))

    assert nok.mask_path.suffix == ".xml"
    assert mask.sum() == 10 * 2 + 10 * 10
    assert mask[9, 4]
    assert mask[39, 49]
    assert not mask[0, 0]
