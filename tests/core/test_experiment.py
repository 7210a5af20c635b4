"""A small simulated-reviewer experiment end to end: CSV, table and plot, and resuming."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from nearcaipi.data import NOK, discover_samples
from nearcaipi.experiment import CSV_COLUMNS, ExperimentConfig, make_refutations, run_experiment
from nearcaipi.selection import choose_for_review, plan_additions
from nearcaipi.similarity import SimilarityIndex


def small_config(data: Path, output: Path) -> ExperimentConfig:
    return ExperimentConfig(
        data_dir=data,
        output_dir=output,
        strategies=("random", "near_caipi"),
        seeds=(0,),
        initial_size=8,
        budget=3,
        iterations=2,
        input_size=32,
        initial_epochs=1,
        retrain_epochs=1,
        batch_size=8,
        device="cpu",
    )


def test_small_experiment_writes_results(plain_dataset: Path, tmp_path: Path) -> None:
    config = small_config(plain_dataset, tmp_path / "run")

    results = run_experiment(config, progress=False)

    with results.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 2 * (2 + 1)
    assert [int(row["interactions"]) for row in rows if row["strategy"] == "random"] == [0, 3, 6]
    near_caipi = [row for row in rows if row["strategy"] == "near_caipi"]
    assert int(near_caipi[-1]["added_refutations"]) >= 6 * 2
    assert int(near_caipi[-1]["training_images"]) > int(rows[2]["training_images"])
    for row in rows:
        assert -1.0 <= float(row["mcc"]) <= 1.0
        assert 0.0 <= float(row["accuracy"]) <= 1.0

    table = (tmp_path / "run" / "table.md").read_text().splitlines()
    assert table[2] == "| strategy | metric | 1 | 2 |"
    assert sum(line.startswith("| Random add |") for line in table) == 3
    assert sum(line.startswith("| Near CAIPI |") for line in table) == 3
    with Image.open(tmp_path / "run" / "mcc.png") as plot:
        assert plot.size[0] > 400


def test_textures_serve_as_backgrounds(plain_dataset: Path, tmp_path: Path) -> None:
    textures = tmp_path / "textures"
    textures.mkdir()
    Image.fromarray(np.full((20, 20, 3), 7, dtype=np.uint8)).save(textures / "crazing_1.jpg")
    config = small_config(plain_dataset, tmp_path / "run")
    config.backgrounds_dir = textures
    sample = next(sample for sample in discover_samples(plain_dataset) if sample.label == NOK)

    refutations = make_refutations(sample, config.background_images(), np.random.default_rng(0))

    assert [refutation.generator for refutation in refutations] == ["zoom_out", "augment", "zoom_in", "background"]
    assert refutations[-1].parameters["background"] == str(textures / "crazing_1.jpg")
    assert all(refutation.label == NOK for refutation in refutations)
    assert all(refutation.source == str(sample.path) for refutation in refutations)


def test_resume_repeats_only_incomplete_runs(plain_dataset: Path, tmp_path: Path) -> None:
    config = small_config(plain_dataset, tmp_path / "run")
    results = run_experiment(config, progress=False)
    lines = results.read_text().splitlines()
    # Drop the last iteration of the last run, as an interruption would.
    results.write_text("\n".join(lines[:-1]) + "\n")

    run_experiment(config, progress=False)

    resumed = results.read_text().splitlines()
    assert len(resumed) == len(lines)
    assert resumed[:4] == lines[:4]
    assert [line.split(",")[:3] for line in resumed[4:]] == [line.split(",")[:3] for line in lines[4:]]


def test_least_confident_images_are_chosen() -> None:
    keys = ["a", "b", "c", "d"]
    p_nok = np.array([0.95, 0.52, 0.1, 0.45])

    chosen = choose_for_review("al", keys, p_nok, 2, np.random.default_rng(0))

    assert chosen == ["b", "d"]


def test_near_al_adds_neighbours_of_wrong_predictions_only() -> None:
    keys = ["wrong", "right", "hit", "miss"]
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.8, -0.3]])
    predicted = {"wrong": 0, "right": 1, "hit": 1, "miss": 0}
    truth = {"wrong": 1, "right": 1, "hit": 1, "miss": 0}
    index = SimilarityIndex(keys, embeddings, [predicted[key] for key in keys])

    additions = plan_additions("near_al", ["wrong", "right"], predicted, truth, index)

    assert additions.reviewed == ["wrong", "right"]
    assert additions.neighbours == ["hit", "miss"]
    assert additions.refute == []


def test_near_caipi_refutes_neighbours_too() -> None:
    keys = ["wrong", "hit", "miss"]
    embeddings = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, -0.3]])
    predicted = {"wrong": 0, "hit": 1, "miss": 0}
    truth = {"wrong": 1, "hit": 1, "miss": 0}
    index = SimilarityIndex(keys, embeddings, [predicted[key] for key in keys])

    additions = plan_additions("near_caipi", ["wrong"], predicted, truth, index)

    assert additions.refute == ["wrong", "hit", "miss"]
