"""Judging explanations of NOK verdicts against expert defect masks, per backbone and explanation method.

For each checkpoint, the defective (NOK) images of its test split whose mask marks at least one pixel are
explained with the target class NOK by RISE, InvRISE and Grad-CAM. Every map is scored in two ways:

- Against the expert's mask (nearcaipi.explanation_metrics): Dice and Jaccard of the map's top 10 % of pixels,
  and whether its single most salient pixel lies inside the mask (hit accuracy, the pointing game).
- Against the model itself, by deletion and insertion (Petsiuk, Das, Saenko, "RISE: Randomized Input Sampling
  for Explanation of Black-box Models", BMVC 2018). Pixels are changed in order of saliency, highest first,
  and the area under the curve of p_nok against the share of changed pixels is reported. Deletion blackens
  pixels, so a lower area is better. Insertion pastes the image's pixels onto a blurred copy, so a higher
  area is better.

Outputs: ``results.csv`` (one row per image, model and method), ``table.md`` (the NearCAIPI paper's Table 1
layout with deletion and insertion columns added) and ``examples.png`` (image, mask outline and every overlay
for a few images).
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import gaussian_blur
from tqdm import tqdm

from nearcaipi.data import (
    NOK,
    DatasetError,
    Sample,
    discover_samples,
    load_mask,
    load_rgb,
    restore_splits,
    split_samples,
)
from nearcaipi.explanation import (
    ExplanationParameters,
    ScoreFunction,
    render_overlay,
    saliency_at_input,
    upsample_map,
)
from nearcaipi.explanation_metrics import compare_with_mask
from nearcaipi.gradcam import gradcam_at_input
from nearcaipi.models import Classifier, ModelCard, load_checkpoint, select_device
from nearcaipi.training import evaluate

logger = logging.getLogger(__name__)

EVALUATION_METHODS: tuple[str, ...] = ("rise", "invrise", "gradcam")
METHOD_TITLES = {"rise": "RISE", "invrise": "InvRISE", "gradcam": "Grad-CAM"}
BACKBONE_TITLES = {"resnet18": "ResNet-18", "alexnet": "AlexNet", "vgg16": "VGG-16", "resnext50_32x4d": "ResNeXt-50"}

DEFAULT_STEPS = 32
# The RISE authors' evaluation notebook (github.com/eclique/RISE, Evaluation.ipynb) blurs the insertion start
# with an 11 x 11 Gaussian kernel of sigma 5 at 224 x 224 input. The same kernel is used at every input size.
INSERTION_BLUR_KERNEL = 11
INSERTION_BLUR_SIGMA = 5.0

CSV_COLUMNS = (
    "model",
    "backbone",
    "checkpoint",
    "model_test_accuracy",
    "image",
    "defect_class",
    "method",
    "p_nok",
    "flat",
    "dice",
    "jaccard",
    "hit",
    "deletion_auc",
    "insertion_auc",
    "map_seconds",
)


def check_methods(methods: Sequence[str]) -> None:
    """Raise ValueError naming the first unknown method and the allowed ones."""
    for method in methods:
        if method not in EVALUATION_METHODS:
            raise ValueError(f"unknown explanation method {method!r}; choose from {', '.join(EVALUATION_METHODS)}")


# Deletion and insertion


@dataclass(frozen=True)
class PerturbationCurves:
    """The target-class probability while the most salient pixels are deleted or inserted."""

    fractions: np.ndarray
    """(steps + 1,) float64, rising from 0 to 1: the share of pixels changed at each step."""
    deletion: np.ndarray
    """(steps + 1,) float64: probability after blackening the most salient pixels."""
    insertion: np.ndarray
    """(steps + 1,) float64: probability after pasting the most salient pixels onto the blurred image."""

    @property
    def deletion_auc(self) -> float:
        return area_under_curve(self.fractions, self.deletion)

    @property
    def insertion_auc(self) -> float:
        return area_under_curve(self.fractions, self.insertion)


def area_under_curve(fractions: np.ndarray, values: np.ndarray) -> float:
    """Trapezoid area under ``values`` over ``fractions`` (x from 0 to 1), so a constant curve has its own value."""
    return float(np.trapezoid(values, fractions))


def blur_for_insertion(image: torch.Tensor) -> torch.Tensor:
    """Blur images with the insertion kernel. (B, 3, h, w) float32 -> the same shape."""
    kernel = [INSERTION_BLUR_KERNEL, INSERTION_BLUR_KERNEL]
    return gaussian_blur(image, kernel, [INSERTION_BLUR_SIGMA, INSERTION_BLUR_SIGMA])


def perturbation_curves(
    score_function: ScoreFunction,
    image: torch.Tensor,
    saliency: torch.Tensor,
    target_class: int,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 100,
) -> PerturbationCurves:
    """Delete and insert pixels in order of saliency and record the target-class probability after each step.

    Deletion starts from the image and sets the most salient pixels to black, 0 in raw pixel space, as a
    RISE mask hides them. Insertion starts from a blurred copy and pastes the image's own pixels back. Step k
    of ``steps`` changes the round(k / steps * h * w) most salient pixels, in all three channels. Ties in the
    map are broken in row-major pixel order, as binarise_top breaks them, so a flat map sweeps the image row
    by row.

    Args:
        score_function: class probabilities of raw-pixel images.
        image: (1, 3, h, w) float32 in [0, 1], the image at the model's input size.
        saliency: (h, w) float map at the same resolution; higher means more relevant.
        batch_size: perturbed images per forward pass.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if tuple(saliency.shape) != tuple(image.shape[-2:]):
        raise ValueError(f"the saliency map is {tuple(saliency.shape)} but the image is {tuple(image.shape[-2:])}")

    height, width = image.shape[-2:]
    pixels = height * width
    order = torch.argsort(saliency.reshape(-1).to(image.device), descending=True, stable=True)
    rank = torch.empty(pixels, dtype=torch.long, device=image.device)
    rank[order] = torch.arange(pixels, device=image.device)
    rank = rank.reshape(height, width)
    # Integer rounding keeps the last step at exactly all pixels.
    counts = (torch.arange(steps + 1) * pixels + steps // 2) // steps

    deletion = _probabilities_along(
        score_function, image, torch.zeros_like(image), rank, counts, target_class, batch_size
    )
    insertion = _probabilities_along(
        score_function, blur_for_insertion(image), image, rank, counts, target_class, batch_size
    )
    return PerturbationCurves(fractions=counts.double().numpy() / pixels, deletion=deletion, insertion=insertion)


def _probabilities_along(
    score_function: ScoreFunction,
    start: torch.Tensor,
    finish: torch.Tensor,
    rank: torch.Tensor,
    counts: torch.Tensor,
    target_class: int,
    batch_size: int,
) -> np.ndarray:
    """Score images that show ``finish`` at the ``count`` most salient pixels and ``start`` elsewhere."""
    probabilities = []
    with torch.inference_mode():
        for chunk in counts.split(batch_size):
            changed = rank.unsqueeze(0) < chunk.to(rank.device)[:, None, None]
            batch = torch.where(changed.unsqueeze(1), finish, start)
            probabilities.append(score_function(batch)[:, target_class].double().cpu())
    return torch.cat(probabilities).numpy()


# Saliency maps of one image


@dataclass
class InputMap:
    """A saliency map at the model's input size and what it cost."""

    saliency: torch.Tensor
    """(S, S) float32 on the CPU."""
    flat: bool
    seconds: float


class _ScoreReplay:
    """A score function that records the model's outputs once and returns them again on a replay.

    RISE and InvRISE with the same parameters draw the same masks and score them in the same chunks, so the
    second method can reuse the first one's forward passes. Each replayed batch is checked against a
    fingerprint of the recorded one, so a change in the mask order fails loudly instead of mixing up scores.
    """

    def __init__(self, score_function: ScoreFunction) -> None:
        self._score_function = score_function
        self._recorded: list[tuple[tuple[int, ...], float, torch.Tensor]] = []
        self._replaying = False
        self._position = 0

    def start_replay(self) -> None:
        self._replaying = True
        self._position = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        fingerprint = (tuple(batch.shape), float(batch.double().sum()))
        if not self._replaying:
            scores = self._score_function(batch)
            self._recorded.append((*fingerprint, scores))
            return scores

        if self._position >= len(self._recorded):
            raise RuntimeError("the replay asked for more batches than were recorded")
        shape, total, scores = self._recorded[self._position]
        if (shape, total) != fingerprint:
            raise RuntimeError(f"replayed batch {self._position} differs from the recorded one")
        self._position += 1
        return scores


def explain_at_input(
    classifier: Classifier,
    model_input: torch.Tensor,
    methods: Sequence[str],
    parameters: ExplanationParameters,
    target_class: int = NOK,
) -> dict[str, InputMap]:
    """Compute the maps of the given methods for one image at the model's input size.

    Args:
        model_input: (1, 3, S, S) float32 in [0, 1], as Classifier.to_input returns it.

    When both RISE and InvRISE are requested, the second one replays the first one's forward passes, so its
    ``seconds`` covers only the arithmetic of its own formula.
    """
    check_methods(methods)
    replay = _ScoreReplay(classifier.probabilities) if {"rise", "invrise"} <= set(methods) else None

    maps = {}
    for method in methods:
        started = time.perf_counter()
        if method == "gradcam":
            saliency, flat = gradcam_at_input(classifier, model_input, target_class)
        else:
            score_function = replay if replay is not None else classifier.probabilities
            saliency, flat, _ = saliency_at_input(score_function, model_input, target_class, method, parameters)
            if replay is not None:
                replay.start_replay()
        maps[method] = InputMap(saliency, flat, time.perf_counter() - started)
    return maps


# Choosing the images


def recorded_test_split(card: ModelCard, data_dir: Path, seed: int) -> list[Sample]:
    """Return the test split a checkpoint recorded, rebuilt against ``data_dir``.

    A checkpoint without recorded splits gets the seeded split of the data set that training would make.
    """
    if card.splits.get("test"):
        return restore_splits({"test": card.splits["test"]}, data_dir)["test"]

    logger.warning("The checkpoint records no splits, so the split of %s with seed %d is used", data_dir, seed)
    return split_samples(discover_samples(data_dir), seed=seed)["test"]


def select_defective(samples: Sequence[Sample], limit: int | None, seed: int) -> list[Sample]:
    """Choose NOK samples whose mask marks at least one pixel, at most ``limit`` of them (None: all).

    Each defect class is shuffled with ``seed``, then the classes take turns, so that a small limit still
    covers every class. The same samples and seed always give the same choice.
    """
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for sample in sorted(samples, key=lambda sample: sample.path):
        if sample.label == NOK and sample.mask_path is not None and _mask_marks_pixels(sample):
            by_class[sample.group].append(sample)

    rng = random.Random(seed)
    queues = []
    for defect_class in sorted(by_class):
        members = by_class[defect_class]
        rng.shuffle(members)
        queues.append(members)

    chosen = [sample for turn in itertools.zip_longest(*queues) for sample in turn if sample is not None]
    return chosen if limit is None else chosen[:limit]


def _mask_marks_pixels(sample: Sample) -> bool:
    with Image.open(sample.path) as image:
        width, height = image.size
    return bool(load_mask(sample.mask_path, (height, width)).any())


# The whole evaluation


@dataclass
class EvaluationConfig:
    """Settings of one evaluation. The mask defaults are the RISE paper's (N = 1000, s = 8, p = 0.5)."""

    data_dir: Path
    checkpoints: Sequence[Path]
    output_dir: Path
    methods: Sequence[str] = EVALUATION_METHODS
    masks: int = 1000
    cells: int = 8
    batch_size: int = 100
    steps: int = DEFAULT_STEPS
    limit: int | None = None
    """Defective test images per model; None evaluates all of them."""
    seed: int = 0
    """Seed of the masks, of the image choice, and of the split for a checkpoint that records none."""
    examples: int = 4
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.checkpoints:
            raise ValueError("give at least one checkpoint")
        self.checkpoints = [Path(checkpoint) for checkpoint in self.checkpoints]
        self.data_dir, self.output_dir = Path(self.data_dir), Path(self.output_dir)
        if not self.methods:
            raise ValueError(f"give at least one method from {', '.join(EVALUATION_METHODS)}")
        check_methods(self.methods)
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")
        if self.examples < 0:
            raise ValueError(f"examples must be 0 or more, got {self.examples}")
        # Checks masks, cells and batch size.
        self.explanation_parameters()

    def explanation_parameters(self) -> ExplanationParameters:
        # Every map draws all N masks in float32: the adaptive mode would stop RISE and InvRISE at different
        # counts, and InvRISE replays the forward passes of RISE.
        return ExplanationParameters(masks=self.masks, cells=self.cells, batch_size=self.batch_size, seed=self.seed)


@dataclass
class ModelSummary:
    """One evaluated checkpoint."""

    label: str
    backbone: str
    checkpoint: Path
    test_accuracy: float
    test_images: int
    defective_images: int
    seconds: float


@dataclass
class ExampleImage:
    """An image shown in the example figure, with the maps of every model and method."""

    name: str
    defect_class: str
    pixels: np.ndarray
    """(H, W, 3) uint8 RGB."""
    mask: np.ndarray
    """(H, W) bool."""
    maps: dict[tuple[str, str], tuple[np.ndarray, bool]] = field(default_factory=dict)
    """(model label, method) -> (the (H, W) float32 map, whether it is flat)."""


@dataclass
class EvaluationReport:
    """Paths of the files run_evaluation wrote, its CSV rows and the per-model summaries."""

    models: list[ModelSummary]
    rows: list[dict]
    results: Path
    table: Path
    figure: Path


def run_evaluation(config: EvaluationConfig, progress: bool = True) -> EvaluationReport:
    """Evaluate every checkpoint and write results.csv, table.md and examples.png to the output folder."""
    _check_inputs(config)
    config.output_dir.mkdir(parents=True, exist_ok=True)

    models: list[ModelSummary] = []
    rows: list[dict] = []
    examples: dict[str, ExampleImage] = {}
    for checkpoint in config.checkpoints:
        classifier = load_checkpoint(checkpoint.read_bytes(), select_device(config.device))
        label = _model_label(classifier.card.backbone, checkpoint, [model.label for model in models])
        summary, model_rows = _evaluate_checkpoint(config, classifier, checkpoint, label, examples, progress)
        models.append(summary)
        rows += model_rows

    report = EvaluationReport(
        models=models,
        rows=rows,
        results=config.output_dir / "results.csv",
        table=config.output_dir / "table.md",
        figure=config.output_dir / "examples.png",
    )
    write_results(rows, report.results)
    write_table(rows, models, config, report.table)
    plot_examples(list(examples.values())[: config.examples], models, config.methods, report.figure)
    return report


def _check_inputs(config: EvaluationConfig) -> None:
    for checkpoint in config.checkpoints:
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"checkpoint file {checkpoint} not found; pass a file written by 'nearcaipi train --output'"
            )

    samples = discover_samples(config.data_dir)
    if not any(sample.label == NOK and sample.mask_path is not None for sample in samples):
        raise DatasetError(
            f"{config.data_dir} has no defect masks for its NOK images; judging explanations needs them "
            "(MT_<Class>/Imgs/<name>.png beside each image, or masks/<name>.png in the plain layout)"
        )


def _model_label(backbone: str, checkpoint: Path, earlier_labels: Sequence[str]) -> str:
    """Name a model by its backbone, adding the file name when an earlier checkpoint has the same backbone."""
    title = BACKBONE_TITLES.get(backbone, backbone)
    return f"{title} ({checkpoint.name})" if title in earlier_labels else title


def _evaluate_checkpoint(
    config: EvaluationConfig,
    classifier: Classifier,
    checkpoint: Path,
    label: str,
    examples: dict[str, ExampleImage],
    progress: bool,
) -> tuple[ModelSummary, list[dict]]:
    """Score the model on its whole test split, then explain and score its chosen defective images."""
    started = time.perf_counter()
    test = recorded_test_split(classifier.card, config.data_dir, config.seed)
    accuracy = evaluate(classifier, test)["accuracy"]
    chosen = select_defective(test, config.limit, config.seed)
    if not chosen:
        raise DatasetError(
            f"the test split of {checkpoint} ({len(test)} images in {config.data_dir}) has no NOK image "
            "with a non-empty defect mask"
        )
    logger.info(
        "%s (%s): test accuracy %.3f on %d images; explaining %d defective images",
        label,
        checkpoint,
        accuracy,
        len(test),
        len(chosen),
    )

    rows = []
    parameters = config.explanation_parameters()
    for position, sample in enumerate(tqdm(chosen, desc=f"explain {label}", disable=not progress)):
        name = sample.relative_to(config.data_dir)
        pixels = load_rgb(sample.path)
        mask = load_mask(sample.mask_path, pixels.shape[:2])
        keep_example = position < config.examples or name in examples
        image_rows, image_maps = _evaluate_image(classifier, pixels, mask, config, parameters)
        for row in image_rows:
            rows.append(
                {
                    "model": label,
                    "backbone": classifier.card.backbone,
                    "checkpoint": checkpoint.name,
                    "model_test_accuracy": round(accuracy, 4),
                    "image": name,
                    "defect_class": sample.group,
                    **row,
                }
            )
        if keep_example:
            example = examples.setdefault(name, ExampleImage(name, sample.group, pixels, mask))
            example.maps.update({(label, method): value for method, value in image_maps.items()})

    summary = ModelSummary(
        label=label,
        backbone=classifier.card.backbone,
        checkpoint=checkpoint,
        test_accuracy=accuracy,
        test_images=len(test),
        defective_images=len(chosen),
        seconds=time.perf_counter() - started,
    )
    return summary, rows


def _evaluate_image(
    classifier: Classifier,
    pixels: np.ndarray,
    mask: np.ndarray,
    config: EvaluationConfig,
    parameters: ExplanationParameters,
) -> tuple[list[dict], dict[str, tuple[np.ndarray, bool]]]:
    """Explain one image with every method; returns a CSV row per method and the maps at the image's size."""
    height, width = pixels.shape[:2]
    model_input = classifier.to_input(pixels)
    p_nok = float(classifier.probabilities(model_input)[0, NOK])
    maps = explain_at_input(classifier, model_input, config.methods, parameters)

    rows = []
    image_maps = {}
    for method, input_map in maps.items():
        saliency = upsample_map(input_map.saliency, height, width)
        agreement = compare_with_mask(saliency, mask)
        curves = perturbation_curves(
            classifier.probabilities, model_input, input_map.saliency, NOK, config.steps, config.batch_size
        )
        rows.append(
            {
                "method": method,
                "p_nok": round(p_nok, 4),
                "flat": int(input_map.flat),
                "dice": round(agreement.dice, 4),
                "jaccard": round(agreement.jaccard, 4),
                "hit": int(agreement.hit),
                "deletion_auc": round(curves.deletion_auc, 4),
                "insertion_auc": round(curves.insertion_auc, 4),
                "map_seconds": round(input_map.seconds, 3),
            }
        )
        image_maps[method] = (saliency, input_map.flat)
    return rows, image_maps


# Outputs


def write_results(rows: Sequence[dict], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_table(rows: Sequence[dict], models: Sequence[ModelSummary], config: EvaluationConfig, path: Path) -> None:
    """Write the NearCAIPI paper's Table 1 layout: per backbone the model accuracy, then a row per method.

    Each cell is the mean over the model's defective test images, so hit accuracy is the share of hits.
    """
    lines = [
        f"Explanations of NOK verdicts, target class NOK. RISE and InvRISE with N = {config.masks} masks of "
        f"{config.cells} x {config.cells} cells (p = 0.5, seed {config.seed}); Grad-CAM on the last convolutional "
        f"stage. Dice, Jaccard and hit accuracy compare each map's top 10 % with the expert mask at the image's "
        f"resolution. Deletion and insertion use {config.steps} steps at the model's input size. "
        "Model acc. is the accuracy on the whole test split.",
        "",
        "| Backbone | Method | Dice | Jaccard | Hit acc. | Deletion AUC (lower is better) "
        "| Insertion AUC (higher is better) | Flat maps |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model in models:
        lines.append(
            f"| {model.label} | Model acc. {model.test_accuracy:.1%} ({model.test_images} test images; "
            f"{model.defective_images} defective images explained) | | | | | | |"
        )
        for method in config.methods:
            method_rows = [row for row in rows if row["model"] == model.label and row["method"] == method]
            if not method_rows:
                continue
            means = {
                column: float(np.mean([row[column] for row in method_rows]))
                for column in ("dice", "jaccard", "hit", "deletion_auc", "insertion_auc")
            }
            flat = sum(row["flat"] for row in method_rows)
            lines.append(
                f"| | {METHOD_TITLES[method]} | {means['dice']:.3f} | {means['jaccard']:.3f} | {means['hit']:.3f} "
                f"| {means['deletion_auc']:.3f} | {means['insertion_auc']:.3f} | {flat} of {len(method_rows)} |"
            )
    path.write_text("\n".join(lines) + "\n")


def plot_examples(
    examples: Sequence[ExampleImage], models: Sequence[ModelSummary], methods: Sequence[str], path: Path
) -> None:
    """Draw a row per example image: the image, its defect mask's outline, then each model's and method's overlay.

    The mask outline is drawn on every panel. A flat map adds no colour, as in the reviewer console.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    columns = [(model.label, method) for model in models for method in methods]
    rows = max(1, len(examples))
    figure, axes = pyplot.subplots(rows, 2 + len(columns), figsize=(2.2 * (2 + len(columns)), 2.0 * rows + 0.4))
    axes = np.atleast_2d(axes)
    for axis in axes.flat:
        axis.set_axis_off()
    if not examples:
        axes[0, 0].text(0.0, 0.5, "no example images", transform=axes[0, 0].transAxes)

    for row, example in enumerate(examples):
        axes[row, 0].imshow(example.pixels)
        axes[row, 0].set_title(f"{example.defect_class}: {Path(example.name).name}", fontsize=7)
        axes[row, 1].imshow(example.pixels)
        _outline(axes[row, 1], example.mask)
        axes[row, 1].set_title("defect mask", fontsize=7)
        for column, (label, method) in enumerate(columns, start=2):
            axis = axes[row, column]
            axis.set_title(f"{label} {METHOD_TITLES[method]}", fontsize=7)
            if (label, method) not in example.maps:
                axis.text(0.5, 0.5, "not in this\nmodel's test split", ha="center", va="center", fontsize=7)
                continue
            saliency, flat = example.maps[(label, method)]
            with Image.open(io.BytesIO(render_overlay(example.pixels, saliency, flat))) as overlay:
                axis.imshow(np.asarray(overlay))
            _outline(axis, example.mask)

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def _outline(axis, mask: np.ndarray) -> None:
    if mask.any():
        axis.contour(mask.astype(np.float32), levels=[0.5], colors="lime", linewidths=0.8)
