"""Folder data sets of OK and NOK images with optional defect masks, and their seeded, stratified splits.

Two layouts are recognised:

- Magnetic tiles (Huang, Qiu, Yuan, "Surface defect saliency of magnetic tile", 2020):
  ``MT_<Class>/Imgs/<name>.jpg`` with the defect mask in ``<name>.png`` beside it. ``MT_Free`` is OK,
  every other class is NOK.
- Plain: ``ok/<name>.<ext>``, ``nok/<name>.<ext>`` and optionally ``masks/<name>.png`` for NOK images, or
  ``masks/<name>.xml`` with Pascal VOC boxes where defects are marked by boxes (a box is a coarse mask).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import random
import shutil
import urllib.request
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

CLASS_NAMES = ("OK", "NOK")
OK, NOK = 0, 1
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})

# The magnetic-tile masks have soft, anti-aliased edges (values 0..255); a pixel is defect from half intensity on.
MASK_THRESHOLD = 128

MAGNETIC_TILES_OK_CLASS = "MT_Free"
MAGNETIC_TILES_COMMIT = "cc4eb53"
MAGNETIC_TILES_URL = (
    "https://github.com/abin24/Magnetic-tile-defect-datasets./archive/" + MAGNETIC_TILES_COMMIT + ".zip"
)

SPLIT_NAMES = ("train", "validation", "test", "pool")


class DatasetError(ValueError):
    """A data set folder that cannot be read as OK/NOK images."""


@dataclass(frozen=True)
class Sample:
    """One image of a folder data set."""

    path: Path
    label: int
    mask_path: Path | None
    group: str

    def relative_to(self, root: Path) -> str:
        return self.path.relative_to(root).as_posix()


@dataclass(frozen=True)
class SplitFractions:
    """Shares of each split; the interactive pool contains the images a reviewer may be shown."""

    train: float = 0.4
    validation: float = 0.1
    test: float = 0.2
    pool: float = 0.3

    def __post_init__(self) -> None:
        values = self.as_dict()
        if any(value < 0 for value in values.values()) or not math.isclose(sum(values.values()), 1.0):
            raise ValueError(f"split fractions must be non-negative and add up to 1, got {values}")

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in SPLIT_NAMES}


def discover_samples(root: Path) -> list[Sample]:
    """List the images of a data set folder in either supported layout, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data set folder {root} does not exist")

    if any(root.glob("MT_*/Imgs")):
        samples = _discover_magnetic_tiles(root)
    elif (root / "ok").is_dir() or (root / "nok").is_dir():
        samples = _discover_plain(root)
    else:
        raise DatasetError(
            f"{root} has neither MT_<Class>/Imgs/ folders (magnetic tiles) nor ok/ and nok/ folders (plain layout)"
        )

    if not samples:
        raise DatasetError(f"{root} contains no images with suffixes {sorted(IMAGE_SUFFIXES)}")
    logger.info(
        "Found %d images in %s (%d OK, %d NOK)",
        len(samples),
        root,
        sum(sample.label == OK for sample in samples),
        sum(sample.label == NOK for sample in samples),
    )
    return sorted(samples, key=lambda sample: sample.path)


def _discover_magnetic_tiles(root: Path) -> list[Sample]:
    samples = []
    for class_dir in sorted(root.glob("MT_*")):
        label = OK if class_dir.name == MAGNETIC_TILES_OK_CLASS else NOK
        group = class_dir.name.removeprefix("MT_")

        # Image and mask share a stem; the .jpg is the photograph and the .png its mask.
        for image_path in sorted((class_dir / "Imgs").glob("*.jpg")):
            mask_path = image_path.with_suffix(".png")
            samples.append(Sample(image_path, label, mask_path if mask_path.exists() else None, group))
    return samples


def _discover_plain(root: Path) -> list[Sample]:
    masks = {}
    if (root / "masks").is_dir():
        # A pixel mask wins over a box annotation of the same image.
        for pattern in ("*.xml", "*.png"):
            masks.update({path.stem: path for path in (root / "masks").glob(pattern)})
    samples = []
    for folder, label in (("ok", OK), ("nok", NOK)):
        for image_path in sorted((root / folder).glob("*")):
            if image_path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            samples.append(Sample(image_path, label, masks.get(image_path.stem), folder))
    return samples


def split_samples(
    samples: Sequence[Sample], fractions: SplitFractions = SplitFractions(), seed: int = 0
) -> dict[str, list[Sample]]:
    """Split samples into train, validation, test and pool, stratified by group (defect class) and seeded.

    Within each group the counts follow the fractions by largest remainder, so every split keeps the
    data set's mix of OK images and of each defect class.
    """
    by_group: dict[str, list[Sample]] = defaultdict(list)
    for sample in sorted(samples, key=lambda sample: sample.path):
        by_group[sample.group].append(sample)

    rng = random.Random(seed)
    splits: dict[str, list[Sample]] = {name: [] for name in SPLIT_NAMES}
    for group in sorted(by_group):
        members = by_group[group]
        rng.shuffle(members)
        start = 0
        for name, count in zip(SPLIT_NAMES, _largest_remainder(len(members), fractions), strict=True):
            splits[name].extend(members[start : start + count])
            start += count

    for name in SPLIT_NAMES:
        splits[name].sort(key=lambda sample: sample.path)
    return splits


def _largest_remainder(total: int, fractions: SplitFractions) -> list[int]:
    exact = [total * fraction for fraction in fractions.as_dict().values()]
    counts = [math.floor(value) for value in exact]
    by_remainder = sorted(range(len(exact)), key=lambda index: exact[index] - counts[index], reverse=True)
    for index in by_remainder[: total - sum(counts)]:
        counts[index] += 1
    return counts


def describe_splits(splits: dict[str, list[Sample]], root: Path) -> dict[str, list[str]]:
    """Return the splits as lists of paths relative to the data set root, for recording with a model."""
    return {name: [sample.relative_to(root) for sample in members] for name, members in splits.items()}


def restore_splits(recorded: dict[str, list[str]], root: Path) -> dict[str, list[Sample]]:
    """Rebuild recorded splits against a data set folder; raises DatasetError for images that are gone."""
    by_relative_path = {sample.relative_to(root): sample for sample in discover_samples(root)}
    missing = [path for paths in recorded.values() for path in paths if path not in by_relative_path]
    if missing:
        raise DatasetError(f"{len(missing)} recorded images are missing under {root}, for example {missing[0]}")
    return {name: [by_relative_path[path] for path in paths] for name, paths in recorded.items()}


def dataset_fingerprint(samples: Iterable[Sample], root: Path) -> str:
    """Hash of the relative paths, labels and file sizes: changes when the training data changes."""
    digest = hashlib.sha256()
    for sample in sorted(samples, key=lambda sample: sample.path):
        digest.update(f"{sample.relative_to(root)}\t{sample.label}\t{sample.path.stat().st_size}\n".encode())
    return digest.hexdigest()


def load_rgb(path: Path) -> np.ndarray:
    """Read an image file as RGB; grayscale is replicated to three channels. Returns (H, W, 3) uint8."""
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def load_mask(path: Path | None, shape: tuple[int, int]) -> np.ndarray:
    """Read a defect mask binarised at MASK_THRESHOLD, or the union of VOC boxes; returns (H, W) bool.

    No mask means no defect.
    """
    if path is None:
        return np.zeros(shape, dtype=bool)
    if path.suffix == ".xml":
        from nearcaipi.refutations import box_to_mask, read_voc_boxes

        mask = np.zeros(shape, dtype=bool)
        for box in read_voc_boxes(path):
            mask |= box_to_mask(box, shape)
        return mask
    with Image.open(path) as image:
        mask = np.asarray(image.convert("L")) >= MASK_THRESHOLD
    if mask.shape != shape:
        raise DatasetError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is {shape[1]}x{shape[0]}")
    return mask


def resolve_data_dir(configured: Path | None, cache_dir: Path) -> Path:
    """Pick the sample data set: the configured folder, else the bundled magnetic tiles, else a download.

    The download fetches the magnetic-tile data set from its public repository into ``cache_dir`` once.
    """
    if configured is not None:
        if not Path(configured).is_dir():
            raise DatasetError(f"configured data folder {configured} does not exist")
        return Path(configured)

    from nearcaipi.config import BUNDLED_DATA_DIR

    if BUNDLED_DATA_DIR.is_dir():
        return BUNDLED_DATA_DIR
    return fetch_magnetic_tiles(cache_dir)


def fetch_magnetic_tiles(cache_dir: Path, url: str = MAGNETIC_TILES_URL, timeout: float = 120.0) -> Path:
    """Download and unpack the magnetic-tile data set once; returns the folder holding the MT_* classes."""
    target = Path(cache_dir) / "magnetic-tiles"
    marker = target / ".complete"
    if marker.exists():
        return target

    logger.info("Downloading the magnetic-tile data set from %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            archive = response.read()
    except OSError as error:
        raise DatasetError(
            f"downloading the magnetic-tile data set from {url} failed ({error}); "
            "set NEARCAIPI_DATA_DIR to a local copy instead"
        ) from error

    # Unpack into a scratch folder first so that an interrupted run leaves no half data set behind.
    scratch = target.with_name(target.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    with zipfile.ZipFile(io.BytesIO(archive)) as bundle:
        bundle.extractall(scratch)
    class_dirs = sorted(scratch.glob("**/MT_*/Imgs"))
    if not class_dirs:
        raise DatasetError(f"the archive from {url} contains no MT_<Class>/Imgs folders")

    shutil.rmtree(target, ignore_errors=True)
    class_dirs[0].parent.parent.rename(target)
    shutil.rmtree(scratch, ignore_errors=True)
    marker.write_text(json.dumps({"url": url}))
    logger.info("Magnetic-tile data set ready in %s", target)
    return target
