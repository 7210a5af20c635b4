"""The simulated-reviewer experiment: selection strategies compared over iterations of the interactive loop.

Per seed, the data set is split (train, validation, test, pool). The initial training set is a stratified
sample of ``initial_size`` images from train and pool; the remaining ones form the interactive pool. Each
iteration predicts the pool and lets the strategy choose ``budget`` images. The simulated reviewer labels them
with the ground-truth label and defect mask. The iteration then adds what the strategy adds (see
nearcaipi.selection), retrains, and scores accuracy, F1 (NOK positive) and MCC on the test split.

Results go to ``results.csv`` (one row per strategy, seed and iteration), ``table.md`` (rows per strategy and
metric, a column per iteration, mean and standard deviation over seeds) and ``mcc.png`` (MCC against the
number of reviewer interactions). An interrupted run resumes: (strategy, seed) runs already complete in the
CSV are skipped, and an incomplete one starts again.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nearcaipi.data import IMAGE_SUFFIXES, NOK, Sample, discover_samples, load_mask, load_rgb, split_samples
from nearcaipi.metrics import classification_metrics
from nearcaipi.models import Classifier, ModelCard, build_network, select_device
from nearcaipi.pretraining import load_backbone_weights
from nearcaipi.refutations import Refutation, generate_refutations
from nearcaipi.selection import (
    STRATEGIES,
    STRATEGY_TITLES,
    check_strategy,
    choose_for_review,
    plan_additions,
    uses_neighbours,
)
from nearcaipi.similarity import SimilarityIndex, embed
from nearcaipi.training import TrainingProfile, fit_classifier, resize_image

logger = logging.getLogger(__name__)

CSV_COLUMNS = (
    "strategy",
    "seed",
    "iteration",
    "interactions",
    "training_images",
    "added_neighbours",
    "added_refutations",
    "accuracy",
    "f1",
    "mcc",
    "seconds",
)
METRICS = ("accuracy", "f1", "mcc")


@dataclass
class ExperimentConfig:
    """The protocol; the defaults are the NearCAIPI paper's casting protocol (211 initial, 42 per iteration, 10)."""

    data_dir: Path
    output_dir: Path
    strategies: Sequence[str] = STRATEGIES
    seeds: Sequence[int] = (0, 1, 2)
    initial_size: int = 211
    budget: int = 42
    iterations: int = 10
    backbone: str = "resnet18"
    input_size: int = 224
    initial_epochs: int = 30
    retrain_epochs: int = 10
    patience: int = 10
    batch_size: int = 32
    learning_rate: float = 0.001
    optimizer: str = "adam"
    device: str = "auto"
    backgrounds_dir: Path | None = None
    """Images to place defects on (for example NEU surface textures); None uses the OK training images."""
    init_weights: Path | None = None
    """Backbone weights to start each run from (see ``nearcaipi pretrain``); None starts from scratch."""

    def __post_init__(self) -> None:
        for strategy in self.strategies:
            check_strategy(strategy)
        if self.initial_size < 2 or self.budget < 1 or self.iterations < 1:
            raise ValueError(
                f"initial_size must be at least 2, budget and iterations at least 1; got {self.initial_size}, "
                f"{self.budget} and {self.iterations}"
            )

    def background_images(self) -> list[Path]:
        if self.backgrounds_dir is None:
            return []
        images = sorted(path for path in Path(self.backgrounds_dir).rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ValueError(f"background folder {self.backgrounds_dir} contains no images")
        return images

    def profile(self, epochs: int) -> TrainingProfile:
        return TrainingProfile(
            "experiment",
            input_size=self.input_size,
            max_epochs=epochs,
            patience=self.patience,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            optimizer=self.optimizer,
        )


class ImageBank:
    """Every image of the data set at the model's input size, loaded once: (N, 3, S, S) uint8."""

    def __init__(self, samples: Sequence[Sample], size: int, progress: bool) -> None:
        from nearcaipi.training import load_images

        self.samples = {str(sample.path): sample for sample in samples}
        self.size = size
        self._index = {str(sample.path): position for position, sample in enumerate(samples)}
        self.images = load_images(samples, size, progress)

    def tensor(self, keys: Sequence[str]) -> torch.Tensor:
        return self.images[[self._index[key] for key in keys]]

    def labels(self, keys: Sequence[str]) -> torch.Tensor:
        return torch.tensor([self.samples[key].label for key in keys], dtype=torch.long)

    def resize(self, pixels: np.ndarray) -> torch.Tensor:
        """Resize generated (H, W, 3) uint8 pixels like the bank's images. Returns (3, S, S) uint8."""
        return resize_image(pixels, self.size)


def make_refutations(sample: Sample, backgrounds: Sequence[Path], rng: np.random.Generator) -> list[Refutation]:
    """Generate the refutations of one reviewed sample, with a background drawn from ``backgrounds``."""
    pixels = load_rgb(sample.path)
    mask = load_mask(sample.mask_path, pixels.shape[:2])

    def pick_background() -> tuple[np.ndarray, str]:
        path = backgrounds[int(rng.integers(len(backgrounds)))]
        return load_rgb(path), str(path)

    return generate_refutations(
        pixels, mask, sample.label, str(sample.path), rng, pick_background if backgrounds else None
    )


def _stratified_pick(samples: Sequence[Sample], count: int, rng: np.random.Generator) -> list[Sample]:
    """Pick ``count`` samples keeping the share of NOK images."""
    nok = [sample for sample in samples if sample.label == NOK]
    ok = [sample for sample in samples if sample.label != NOK]
    nok_count = min(len(nok), max(1, round(count * len(nok) / len(samples))))
    ok_count = min(len(ok), count - nok_count)
    picked = [nok[index] for index in rng.choice(len(nok), nok_count, replace=False)]
    picked += [ok[index] for index in rng.choice(len(ok), ok_count, replace=False)]
    return sorted(picked, key=lambda sample: sample.path)


def _evaluate(classifier: Classifier, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    _, p_nok = embed(classifier, images)
    return classification_metrics(labels.tolist(), (p_nok >= 0.5).astype(int).tolist())


def run_strategy(
    config: ExperimentConfig, strategy: str, seed: int, bank: ImageBank, progress: bool
) -> list[dict[str, float | int | str]]:
    """Run one strategy with one seed through all iterations; returns one row per iteration (0 = initial)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    splits = split_samples(list(bank.samples.values()), seed=seed)
    candidates = splits["train"] + splits["pool"]
    if config.initial_size >= len(candidates):
        raise ValueError(f"initial_size {config.initial_size} leaves no pool among {len(candidates)} images")

    initial = _stratified_pick(candidates, config.initial_size, rng)
    training_keys = [str(sample.path) for sample in initial]
    pool_keys = sorted(set(map(str, (sample.path for sample in candidates))) - set(training_keys))
    extra_images: list[torch.Tensor] = []
    extra_labels: list[int] = []
    validation = [str(sample.path) for sample in splits["validation"]]
    test = [str(sample.path) for sample in splits["test"]]
    test_images, test_labels = bank.tensor(test), bank.labels(test)

    network, _ = build_network(config.backbone, pretrained=False)
    if config.init_weights is not None:
        load_backbone_weights(network, config.init_weights)
    card = ModelCard(backbone=config.backbone, input_size=config.input_size)
    classifier = Classifier(network, card, select_device(config.device))

    rows: list[dict[str, float | int | str]] = []
    interactions = neighbours_added = refutations_added = 0
    for iteration in range(config.iterations + 1):
        started = time.perf_counter()
        if iteration > 0:
            pool_images = bank.tensor(pool_keys)
            embeddings, p_nok = embed(classifier, pool_images)
            reviewed = choose_for_review(strategy, pool_keys, p_nok, config.budget, rng)
            predicted = {key: int(p >= 0.5) for key, p in zip(pool_keys, p_nok, strict=True)}
            truth = {key: bank.samples[key].label for key in pool_keys}
            index = (
                SimilarityIndex(pool_keys, embeddings, list(predicted.values())) if uses_neighbours(strategy) else None
            )
            additions = plan_additions(strategy, reviewed, predicted, truth, index)

            backgrounds = config.background_images() or [
                bank.samples[key].path for key in training_keys if bank.samples[key].label != NOK
            ]
            for key in additions.refute:
                for refutation in make_refutations(bank.samples[key], backgrounds, rng):
                    extra_images.append(bank.resize(refutation.pixels))
                    extra_labels.append(refutation.label)
                    refutations_added += 1

            moved = set(additions.reviewed) | set(additions.neighbours)
            training_keys += additions.reviewed + additions.neighbours
            pool_keys = [key for key in pool_keys if key not in moved]
            interactions += len(additions.reviewed)
            neighbours_added += len(additions.neighbours)

        images = bank.tensor(training_keys)
        labels = bank.labels(training_keys)
        if extra_images:
            images = torch.cat([images, torch.stack(extra_images)])
            labels = torch.cat([labels, torch.tensor(extra_labels, dtype=torch.long)])
        # Iterations continue from the previous model (fine-tuning), which keeps the experiment affordable.
        epochs = config.initial_epochs if iteration == 0 else config.retrain_epochs
        fit_classifier(
            classifier,
            images,
            labels,
            bank.tensor(validation),
            bank.labels(validation),
            config.profile(epochs),
            seed=seed * 1000 + iteration,
            progress=False,
        )

        metrics = _evaluate(classifier, test_images, test_labels)
        rows.append(
            {
                "strategy": strategy,
                "seed": seed,
                "iteration": iteration,
                "interactions": interactions,
                "training_images": len(labels),
                "added_neighbours": neighbours_added,
                "added_refutations": refutations_added,
                **{name: round(metrics[name], 4) for name in METRICS},
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        logger.info(
            "%s seed %d iteration %d: %d training images, test MCC %.3f",
            strategy,
            seed,
            iteration,
            len(labels),
            metrics["mcc"],
        )
        if progress:
            tqdm.write(f"{strategy} seed {seed} iteration {iteration}: MCC {metrics['mcc']:.3f}")
    return rows


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _write_rows(path: Path, rows: Sequence[dict]) -> None:
    scratch = path.with_suffix(".partial")
    with scratch.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    scratch.replace(path)


def run_experiment(config: ExperimentConfig, progress: bool = True) -> Path:
    """Run every strategy with every seed, resuming from ``results.csv``; writes CSV, table and plot."""
    config.output_dir.mkdir(parents=True, exist_ok=True)
    results = config.output_dir / "results.csv"
    (config.output_dir / "config.txt").write_text(
        "\n".join(f"{name} = {value}" for name, value in asdict(config).items()) + "\n"
    )

    rows = _read_rows(results)
    complete = {(row["strategy"], int(row["seed"])) for row in rows if int(row["iteration"]) == config.iterations}
    rows = [row for row in rows if (row["strategy"], int(row["seed"])) in complete]
    runs = [
        (strategy, seed) for seed in config.seeds for strategy in config.strategies if (strategy, seed) not in complete
    ]
    if complete:
        logger.info("Resuming: %d runs already complete in %s, %d to go", len(complete), results, len(runs))

    samples = discover_samples(config.data_dir)
    bank = ImageBank(samples, config.input_size, progress) if runs else None
    for strategy, seed in tqdm(runs, desc="experiment runs", disable=not progress):
        rows += run_strategy(config, strategy, seed, bank, progress)
        _write_rows(results, rows)

    rows = _read_rows(results)
    write_table(rows, config.output_dir / "table.md", config)
    plot_mcc(rows, config.output_dir / "mcc.png", config)
    return results


def _summaries(rows: Sequence[dict[str, str]], strategy: str, metric: str, iteration: int) -> tuple[float, float]:
    values = [float(row[metric]) for row in rows if row["strategy"] == strategy and int(row["iteration"]) == iteration]
    if not values:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values))


def write_table(rows: Sequence[dict[str, str]], path: Path, config: ExperimentConfig) -> None:
    """Write a table in the NearCAIPI paper's layout: a row per strategy and metric, a column per iteration.

    Each cell is the mean ± standard deviation over seeds.
    """
    iterations = range(1, config.iterations + 1)
    strategies = [strategy for strategy in config.strategies if any(row["strategy"] == strategy for row in rows)]
    seeds = sorted({int(row["seed"]) for row in rows})
    lines = [
        f"Test metrics after each retraining, mean ± standard deviation over seeds {seeds}; "
        f"{config.initial_size} initial training images, {config.budget} interactions per iteration.",
        "",
        "| strategy | metric | " + " | ".join(str(iteration) for iteration in iterations) + " |",
        "| --- | --- | " + " | ".join("---" for _ in iterations) + " |",
    ]
    for strategy in strategies:
        for metric in METRICS:
            cells = []
            for iteration in iterations:
                mean, spread = _summaries(rows, strategy, metric, iteration)
                cells.append(f"{mean:.2f} ± {spread:.2f}")
            lines.append(f"| {STRATEGY_TITLES[strategy]} | {metric} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def plot_mcc(rows: Sequence[dict[str, str]], path: Path, config: ExperimentConfig) -> None:
    """Plot test MCC against reviewer interactions: mean line and a band of one standard deviation per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for strategy in config.strategies:
        strategy_rows = [row for row in rows if row["strategy"] == strategy]
        if not strategy_rows:
            continue
        iterations = sorted({int(row["iteration"]) for row in strategy_rows})
        interactions = [iteration * config.budget for iteration in iterations]
        statistics = [_summaries(rows, strategy, "mcc", iteration) for iteration in iterations]
        means = np.array([mean for mean, _ in statistics])
        spreads = np.array([spread for _, spread in statistics])
        axes.plot(interactions, means, marker="o", label=STRATEGY_TITLES[strategy])
        axes.fill_between(interactions, means - spreads, means + spreads, alpha=0.15)

    axes.set_xlabel("reviewer interactions")
    axes.set_ylabel("test MCC")
    axes.set_title("MCC against reviewer interactions (mean ± std over seeds)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
