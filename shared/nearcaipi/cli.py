"""The ``nearcaipi`` command line: train, predict, explain, start the stack, simulate a camera."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

from nearcaipi.config import StackSettings, TrainerSettings
from nearcaipi.data import DatasetError, resolve_data_dir, restore_splits
from nearcaipi.evaluation import EVALUATION_METHODS
from nearcaipi.explanation import (
    METHODS,
    PRECISIONS,
    ExplanationParameters,
    encode_map,
    explain,
    render_overlay,
    resolve_precision,
)
from nearcaipi.imaging import IDENTIFIER_PATTERN, InvalidImageError, read_image_file
from nearcaipi.logs import configure_logging
from nearcaipi.models import BACKBONES, Classifier, load_checkpoint, save_checkpoint
from nearcaipi.selection import STRATEGIES
from nearcaipi.training import TRAINING_PROFILES

logger = logging.getLogger("nearcaipi")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nearcaipi", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="Logging level (default INFO).")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="Train a classifier and publish it as a model version.")
    train.add_argument("--data", type=Path, help="Folder data set (default: the sample magnetic tiles).")
    train.add_argument("--backbone", choices=sorted(BACKBONES), default="resnet18")
    train.add_argument("--profile", choices=sorted(TRAINING_PROFILES), default="quick")
    train.add_argument("--seed", type=int, default=0, help="Seed of the splits and of training.")
    train.add_argument("--epochs", type=int, help="Maximum number of epochs (default: the profile's).")
    train.add_argument(
        "--image-size", type=int, help="Side of the square model input in pixels (default: the profile's)."
    )
    train.add_argument("--output", type=Path, help="Also write the checkpoint to this file.")
    train.add_argument("--no-publish", action="store_true", help="Do not register the model in the stack's records.")

    predict = commands.add_parser("predict", help="Classify image files as OK or NOK.")
    predict.add_argument("images", nargs="+", type=Path)
    predict.add_argument("--checkpoint", type=Path, help="Checkpoint file (default: the stack's promoted version).")

    explain_command = commands.add_parser("explain", help="Compute a saliency map of one image.")
    explain_command.add_argument("image", type=Path)
    explain_command.add_argument("--method", choices=METHODS, default="invrise")
    explain_command.add_argument("--checkpoint", type=Path, help="Checkpoint file (default: the promoted version).")
    explain_command.add_argument("--masks", type=int, default=1000, help="Number of random masks N (default 1000).")
    explain_command.add_argument("--cells", type=int, default=8, help="Mask grid size s (default 8).")
    explain_command.add_argument("--batch-size", type=int, default=100, help="Masked images per forward pass.")
    explain_command.add_argument("--seed", type=int, default=0)
    explain_command.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="Data type of the masked forward passes (default auto: bfloat16 on CPUs with native support).",
    )
    explain_command.add_argument(
        "--nchw", action="store_true", help="Keep the NCHW memory layout instead of channels-last."
    )
    explain_command.add_argument(
        "--adaptive",
        type=float,
        metavar="AGREEMENT",
        help="Stop drawing masks once the map is predicted to correlate this well with the full-N map (e.g. 0.98).",
    )
    explain_command.add_argument(
        "--output", type=Path, help="Overlay PNG (default: var/explanations/<image>.<method>.png)."
    )
    explain_command.add_argument("--map", type=Path, help="Also write the raw map as .npy (H x W float32).")

    up = commands.add_parser("up", help="Start API, workers and console; train first if no model exists.")
    up.add_argument("--data", type=Path, help="Folder data set (default: the sample magnetic tiles).")
    up.add_argument("--port", type=int, default=8000, help="API port (default 8000).")
    up.add_argument("--console-port", type=int, default=8501, help="Reviewer console port (default 8501).")
    up.add_argument("--camera-rate", type=float, default=1.0, help="Images per second of the simulated camera.")
    up.add_argument("--no-camera", action="store_true", help="Do not run the camera simulator.")

    retrain = commands.add_parser("retrain", help="Queue a training run for the trainer worker.")
    retrain.add_argument("--data", type=Path, help="Folder data set (default: the sample magnetic tiles).")
    retrain.add_argument("--backbone", choices=sorted(BACKBONES), default="resnet18")
    retrain.add_argument("--profile", choices=sorted(TRAINING_PROFILES), default="quick")
    retrain.add_argument("--seed", type=int, default=0, help="Seed of the splits and of training.")
    retrain.add_argument(
        "--strategy",
        choices=STRATEGIES,
        help="Fine-tune the promoted version on the data set plus the reviews, with this selection strategy "
        "(default: train a new model from the data set alone).",
    )

    experiment = commands.add_parser(
        "experiment", help="Compare selection strategies with a simulated reviewer (resumable)."
    )
    experiment.add_argument(
        "--data", type=Path, help="Folder data set with masks (default: the sample magnetic tiles)."
    )
    experiment.add_argument("--output", type=Path, default=Path("experiment"), help="Folder for CSV, table and plot.")
    experiment.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    experiment.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    experiment.add_argument("--initial", type=int, default=211, help="Initial training images (default 211).")
    experiment.add_argument("--budget", type=int, default=42, help="Reviewer interactions per iteration (default 42).")
    experiment.add_argument("--iterations", type=int, default=10, help="Number of retrainings (default 10).")
    experiment.add_argument("--backbone", choices=sorted(BACKBONES), default="resnet18")
    experiment.add_argument("--image-size", type=int, default=224, help="Model input side in pixels (default 224).")
    experiment.add_argument("--initial-epochs", type=int, default=30, help="Epochs of the initial training.")
    experiment.add_argument("--retrain-epochs", type=int, default=10, help="Epochs of each retraining.")
    experiment.add_argument("--batch-size", type=int, default=32)
    experiment.add_argument(
        "--backgrounds", type=Path, help="Images to place defects on, such as NEU textures (default: OK images)."
    )
    experiment.add_argument(
        "--init-weights",
        type=Path,
        help="Backbone weights to start every run from, written by nearcaipi pretrain (default: from scratch).",
    )

    evaluation = commands.add_parser(
        "evaluate-explanations",
        help="Judge RISE, InvRISE and Grad-CAM maps against the defect masks of NOK test images.",
    )
    evaluation.add_argument(
        "--data", type=Path, help="Folder data set with defect masks (default: the sample magnetic tiles)."
    )
    evaluation.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        required=True,
        help="Checkpoint file to evaluate; repeat for several models. Each is scored on the test split it recorded.",
    )
    evaluation.add_argument(
        "--methods",
        nargs="+",
        choices=EVALUATION_METHODS,
        default=list(EVALUATION_METHODS),
        help="Explanation methods (default: all of them).",
    )
    evaluation.add_argument(
        "--masks", type=int, default=1000, help="Random masks N of RISE and InvRISE (default 1000)."
    )
    evaluation.add_argument(
        "--steps", type=int, default=32, help="Deletion and insertion steps from 0 to all pixels (default 32)."
    )
    evaluation.add_argument(
        "--limit", type=int, help="Defective test images per model, chosen by --seed (default: all of them)."
    )
    evaluation.add_argument(
        "--seed", type=int, default=0, help="Seed of the masks and of the image choice (default 0)."
    )
    evaluation.add_argument(
        "--examples", type=int, default=4, help="Images shown in examples.png (default 4, 0 for none)."
    )
    evaluation.add_argument("--batch-size", type=int, default=100, help="Images per forward pass (default 100).")
    evaluation.add_argument(
        "--device", default="auto", help="auto (the first CUDA GPU when visible, else the CPU), cpu or cuda:N."
    )
    evaluation.add_argument(
        "--output",
        type=Path,
        default=Path("explanation-evaluation"),
        help="Folder for results.csv, table.md and examples.png (default: explanation-evaluation).",
    )

    similarity = commands.add_parser(
        "benchmark-similarity", help="Measure near hit/miss queries and index rebuilds at plant scale."
    )
    similarity.add_argument(
        "--sizes",
        nargs="+",
        type=int,
        default=[10_000, 1_000_000],
        help="Numbers of images in the index to time (default 10000 and 1000000).",
    )
    similarity.add_argument("--dimensions", type=int, default=512, help="Embedding length (512 for ResNet-18).")
    similarity.add_argument("--image-size", type=int, default=128, help="Model input side for the embedding cost.")

    pretrain = commands.add_parser(
        "pretrain", help="Learn backbone weights on a texture data set, for use without ImageNet weights."
    )
    pretrain.add_argument("--data", type=Path, required=True, help="Texture images, e.g. NEU surface defects.")
    pretrain.add_argument("--output", type=Path, required=True, help="File for the backbone weights.")
    pretrain.add_argument("--backbone", choices=sorted(BACKBONES), default="resnet18")
    pretrain.add_argument("--image-size", type=int, default=64, help="Input side in pixels (default 64).")
    pretrain.add_argument("--epochs", type=int, default=15, help="Training epochs (default 15).")
    pretrain.add_argument("--seed", type=int, default=0)

    speed = commands.add_parser(
        "benchmark-explanation",
        help="Time InvRISE and RISE against the float32 floor; measure fidelity and the adaptive mode.",
    )
    speed.add_argument("--backbone", choices=sorted(BACKBONES), default="resnet18")
    speed.add_argument("--image-size", type=int, default=224, help="Model input side for the timing (default 224).")
    speed.add_argument("--masks", type=int, default=1000, help="Number of masks N (default 1000).")
    speed.add_argument("--batch-size", type=int, default=100, help="Masked images per forward pass (default 100).")
    speed.add_argument("--repeats", type=int, default=3, help="Timed runs per configuration; the median counts.")
    speed.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="Precision of the fastest configuration (default auto).",
    )
    speed.add_argument("--nchw", action="store_true", help="Keep NCHW in the fastest configuration.")
    speed.add_argument(
        "--checkpoint", type=Path, help="Trained checkpoint for fidelity and the adaptive mode (skipped without)."
    )
    speed.add_argument("--data", type=Path, help="Folder data set (default: the sample magnetic tiles).")
    speed.add_argument("--images", type=int, default=5, help="Defective test images for fidelity and adaptive mode.")
    speed.add_argument(
        "--adaptive", type=float, default=0.98, help="Target agreement of the adaptive mode (default 0.98)."
    )
    speed.add_argument(
        "--skip-float32-methods", action="store_true", help="Do not time InvRISE and RISE in float32 NCHW."
    )
    speed.add_argument(
        "--queue-depths",
        nargs="*",
        type=int,
        default=[1, 8],
        help="Images explained together in the throughput test (default 1 8; none skips it).",
    )
    speed.add_argument(
        "--output",
        type=Path,
        default=Path("explanation-benchmark"),
        help="Folder for report.md, CSV files and trade_off.png (default: explanation-benchmark).",
    )

    camera = commands.add_parser("camera", help="Post images to the API like a line camera.")
    camera.add_argument("paths", nargs="*", type=Path, help="Image files or folders.")
    camera.add_argument(
        "--split",
        choices=("train", "validation", "test", "pool"),
        help="Post this split of the promoted model's data set instead of paths.",
    )
    camera.add_argument(
        "--api", default="http://127.0.0.1:8000", help="Base URL of the inference API (default %(default)s)."
    )
    camera.add_argument(
        "--rate", type=float, default=1.0, help="Images per second, 0 for as fast as possible (default %(default)s)."
    )
    camera.add_argument(
        "--camera-id",
        default="camera-1",
        help="Id sent with every image: 1-64 of A-Z a-z 0-9 . _ : - (default %(default)s).",
    )
    camera.add_argument("--limit", type=int, help="Post at most this many images.")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    configure_logging(arguments.log_level)
    handlers = {
        "train": _train,
        "predict": _predict,
        "explain": _explain,
        "up": _up,
        "retrain": _retrain,
        "experiment": _experiment,
        "evaluate-explanations": _evaluate_explanations,
        "benchmark-similarity": _benchmark_similarity,
        "benchmark-explanation": _benchmark_explanation,
        "pretrain": _pretrain,
        "camera": _camera,
    }
    try:
        return handlers[arguments.command](arguments)
    except (DatasetError, InvalidImageError, OSError, LookupError, ValueError) as error:
        print(f"nearcaipi {arguments.command}: {error}", file=sys.stderr)
        return 2


def _open_stack(settings: StackSettings):
    from nearcaipi.storage.objects import open_object_store
    from nearcaipi.storage.records import RecordStore

    records = RecordStore(settings.database_url)
    records.create_schema()
    return records, open_object_store(settings)


def _load_classifier(checkpoint: Path | None) -> Classifier:
    if checkpoint is not None:
        try:
            return load_checkpoint(checkpoint.read_bytes())
        except ValueError as error:
            raise ValueError(f"{checkpoint}: {error}") from error

    records, objects = _open_stack(StackSettings())
    record = records.promoted_model_version()
    if record is None:
        raise LookupError("no model version is promoted; run 'nearcaipi train' or pass --checkpoint")
    return load_checkpoint(objects.get(record.checkpoint_key))


def _train(arguments: argparse.Namespace) -> int:
    from nearcaipi.data import discover_samples, split_samples
    from nearcaipi.training import evaluate, train_classifier
    from nearcaipi.workflows import train_evaluate_publish

    settings = TrainerSettings()
    data_dir = resolve_data_dir(arguments.data or settings.data_dir, settings.home / "datasets")
    overrides = {}
    if arguments.epochs is not None:
        overrides["max_epochs"] = _positive(arguments.epochs, "--epochs")
    if arguments.image_size is not None:
        overrides["input_size"] = _positive(arguments.image_size, "--image-size")

    if arguments.no_publish:
        splits = split_samples(discover_samples(data_dir), seed=arguments.seed)
        profile = dataclasses.replace(TRAINING_PROFILES[arguments.profile], **overrides)
        classifier, report = train_classifier(splits, data_dir, arguments.backbone, profile, seed=arguments.seed)
        classifier.card.test_metrics = evaluate(classifier, splits["test"])
        version, promoted = None, False
    else:
        records, objects = _open_stack(settings)
        published = train_evaluate_publish(
            data_dir, records, objects, arguments.backbone, arguments.profile, arguments.seed, overrides=overrides
        )
        classifier, report = published.classifier, published.report
        version, promoted = published.version, published.promoted

    if arguments.output:
        arguments.output.write_bytes(save_checkpoint(classifier.network, classifier.card))
    test = classifier.card.test_metrics
    print(
        f"trained {arguments.backbone} ({arguments.profile} profile) in {report.seconds:.0f} s, "
        f"{report.epochs_run} epochs (best {report.best_epoch})\n"
        f"test accuracy {test['accuracy']:.3f}  F1 {test['f1']:.3f}  MCC {test['mcc']:.3f}"
    )
    if version is not None:
        print(f"model version {version} {'promoted' if promoted else 'kept as a candidate'}")
    return 0


def _experiment(arguments: argparse.Namespace) -> int:
    from nearcaipi.experiment import ExperimentConfig, run_experiment

    settings = TrainerSettings()
    config = ExperimentConfig(
        data_dir=resolve_data_dir(arguments.data or settings.data_dir, settings.home / "datasets"),
        output_dir=arguments.output,
        strategies=arguments.strategies,
        seeds=arguments.seeds,
        initial_size=arguments.initial,
        budget=arguments.budget,
        iterations=arguments.iterations,
        backbone=arguments.backbone,
        input_size=_positive(arguments.image_size, "--image-size"),
        initial_epochs=_positive(arguments.initial_epochs, "--initial-epochs"),
        retrain_epochs=_positive(arguments.retrain_epochs, "--retrain-epochs"),
        batch_size=_positive(arguments.batch_size, "--batch-size"),
        backgrounds_dir=arguments.backgrounds,
        init_weights=arguments.init_weights,
    )
    if config.init_weights is not None and not config.init_weights.is_file():
        raise ValueError(f"--init-weights {config.init_weights} is not a file; write one with nearcaipi pretrain")
    results = run_experiment(config)
    print(f"results in {results}, table in {config.output_dir / 'table.md'}, plot in {config.output_dir / 'mcc.png'}")
    return 0


def _evaluate_explanations(arguments: argparse.Namespace) -> int:
    from nearcaipi.evaluation import EvaluationConfig, run_evaluation

    settings = TrainerSettings()
    config = EvaluationConfig(
        data_dir=resolve_data_dir(arguments.data or settings.data_dir, settings.home / "datasets"),
        checkpoints=arguments.checkpoint,
        output_dir=arguments.output,
        methods=arguments.methods,
        masks=_positive(arguments.masks, "--masks"),
        steps=_positive(arguments.steps, "--steps"),
        limit=None if arguments.limit is None else _positive(arguments.limit, "--limit"),
        seed=arguments.seed,
        examples=arguments.examples,
        batch_size=_positive(arguments.batch_size, "--batch-size"),
        device=arguments.device,
    )
    started = time.perf_counter()
    report = run_evaluation(config)
    seconds = time.perf_counter() - started

    for model in report.models:
        print(
            f"{model.label}: test accuracy {model.test_accuracy:.3f}, {model.defective_images} defective images "
            f"explained in {model.seconds:.0f} s ({model.seconds / model.defective_images:.1f} s per image)"
        )
    print(f"{len(report.rows)} rows in {report.results}, table in {report.table}, examples in {report.figure}")
    print(f"finished in {seconds:.0f} s")
    return 0


def _pretrain(arguments: argparse.Namespace) -> int:
    from nearcaipi.pretraining import describe, pretrain_backbone

    report = pretrain_backbone(
        arguments.data,
        arguments.output,
        backbone=arguments.backbone,
        input_size=_positive(arguments.image_size, "--image-size"),
        epochs=_positive(arguments.epochs, "--epochs"),
        seed=arguments.seed,
    )
    print(f"pretrained {arguments.backbone}: {describe(report)}\nweights written to {arguments.output}")
    return 0


def _benchmark_explanation(arguments: argparse.Namespace) -> int:
    import platform

    import torch

    from nearcaipi.data import NOK, discover_samples, load_rgb, split_samples
    from nearcaipi.explanation_benchmark import (
        BenchmarkReport,
        measure_adaptive,
        measure_fidelity,
        measure_throughput,
        time_explanations,
        write_report,
    )

    settings = TrainerSettings()
    data_dir = resolve_data_dir(arguments.data or settings.data_dir, settings.home / "datasets")
    samples = split_samples(discover_samples(data_dir), seed=0)["test"]
    defective = [sample for sample in samples if sample.label == NOK][: _positive(arguments.images, "--images")]
    if not defective:
        raise DatasetError(f"the test split of {data_dir} has no defective image")
    images = [(sample.path.name, load_rgb(sample.path)) for sample in defective]

    device = torch.device("cpu")
    fast = ExplanationParameters(
        masks=_positive(arguments.masks, "--masks"),
        batch_size=_positive(arguments.batch_size, "--batch-size"),
        precision=resolve_precision(arguments.precision, device),
        channels_last=not arguments.nchw,
        target_agreement=arguments.adaptive,
    )
    report = BenchmarkReport(
        settings={
            "command": "nearcaipi " + " ".join(sys.argv[1:]),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}",
            "backbone": arguments.backbone,
            "timing input": f"{arguments.image_size} x {arguments.image_size}, image {images[0][0]}",
            "masks": fast.masks,
            "batch": fast.batch_size,
            "fastest configuration": f"{fast.precision}, {'channels-last' if fast.channels_last else 'NCHW'}",
            "adaptive target": fast.target_agreement,
        }
    )
    time_explanations(
        arguments.backbone,
        _positive(arguments.image_size, "--image-size"),
        images[0][1],
        fast,
        _positive(arguments.repeats, "--repeats"),
        report,
        include_float32_methods=not arguments.skip_float32_methods,
    )
    if arguments.queue_depths:
        depths = [_positive(depth, "--queue-depths") for depth in arguments.queue_depths]
        batch_images = [pixels for _, pixels in images] * (-(-max(depths) // len(images)))
        measure_throughput(
            arguments.backbone,
            arguments.image_size,
            batch_images[: max(depths)],
            dataclasses.replace(fast, target_agreement=None),
            depths,
            report,
        )

    if arguments.checkpoint:
        classifier = load_checkpoint(arguments.checkpoint.read_bytes())
        report.settings["checkpoint"] = f"{arguments.checkpoint.name} ({classifier.card.backbone}, "
        report.settings["checkpoint"] += f"{classifier.input_size} px)"
        fixed = dataclasses.replace(fast, target_agreement=None)
        configurations = {
            f"{fast.precision} {'channels-last' if fast.channels_last else 'NCHW'}": fixed,
            "float32 channels-last": dataclasses.replace(fixed, precision="float32", channels_last=True),
        }
        measure_fidelity(classifier, images, configurations, report)
        measure_adaptive(classifier, images, fast, report)

    write_report(report, arguments.output)
    print(report.markdown())
    print(f"report written to {arguments.output / 'report.md'}")
    return 0


def _benchmark_similarity(arguments: argparse.Namespace) -> int:
    import torch

    from nearcaipi.models import ModelCard, build_network
    from nearcaipi.similarity import SimilarityIndex, embed

    rng = np.random.default_rng(0)
    print(f"torch threads: {torch.get_num_threads()}, embedding length {arguments.dimensions}")

    # Rebuilding an index for a new model version means embedding every pool image again: measure per image.
    network, _ = build_network("resnet18", pretrained=False)
    classifier = Classifier(network, ModelCard(backbone="resnet18", input_size=arguments.image_size))
    batch = torch.rand(64, 3, arguments.image_size, arguments.image_size)
    embed(classifier, batch[:8])
    started = time.perf_counter()
    embed(classifier, batch)
    per_image = (time.perf_counter() - started) / len(batch)
    print(f"embedding (ResNet-18 forward at {arguments.image_size} px): {per_image * 1000:.1f} ms per image")

    for size in arguments.sizes:
        embeddings = rng.standard_normal((size, arguments.dimensions), dtype=np.float32)
        classes = rng.integers(0, 2, size)
        keys = [str(number) for number in range(size)]

        started = time.perf_counter()
        index = SimilarityIndex(keys, embeddings, classes)
        build_seconds = time.perf_counter() - started

        queries = rng.standard_normal((20, arguments.dimensions), dtype=np.float32)
        started = time.perf_counter()
        for query in queries:
            index.nearest(query, 1)
        query_seconds = (time.perf_counter() - started) / len(queries)

        print(
            f"{size:>9} images: query {query_seconds * 1000:.2f} ms, index build {build_seconds:.2f} s "
            f"(+ embedding {size * per_image / 60:.1f} min), codebook {index.unit.nbytes / 2**20:.0f} MiB"
        )
    return 0


def _positive(value: int, option: str) -> int:
    if value < 1:
        raise ValueError(f"{option} must be a positive whole number, got {value}")
    return value


def _retrain(arguments: argparse.Namespace) -> int:
    from nearcaipi.queue import TRAIN_TASK, create_celery_app
    from nearcaipi.storage.records import TrainingRunRecord

    settings = TrainerSettings()
    data_dir = resolve_data_dir(arguments.data or settings.data_dir, settings.home / "datasets")
    records, _ = _open_stack(settings)
    run_id = records.add_training_run(
        TrainingRunRecord(
            backbone=arguments.backbone,
            profile=arguments.profile,
            data_dir=str(data_dir.resolve()),
            seed=arguments.seed,
            strategy=arguments.strategy,
        )
    )
    create_celery_app(settings, "nearcaipi-cli").send_task(TRAIN_TASK, args=[run_id])
    learning = f", learning from reviews with {arguments.strategy}" if arguments.strategy else ""
    print(
        f"training run {run_id} queued ({arguments.backbone}, {arguments.profile} profile, data {data_dir}{learning})"
    )
    return 0


def _predict(arguments: argparse.Namespace) -> int:
    classifier = _load_classifier(arguments.checkpoint)
    failures = 0
    for path in arguments.images:
        try:
            pixels = read_image_file(path).pixels
        except (InvalidImageError, OSError) as error:
            # One bad file must not hide the verdicts on the others.
            print(f"nearcaipi predict: skipped {path}: {error}", file=sys.stderr)
            failures += 1
            continue
        p_nok = classifier.predict([pixels])[0]
        print(f"{path}\t{'NOK' if p_nok >= 0.5 else 'OK'}\tp_nok={p_nok:.4f}")
    return 1 if failures else 0


def _explain(arguments: argparse.Namespace) -> int:
    classifier = _load_classifier(arguments.checkpoint)
    image = read_image_file(arguments.image).pixels
    parameters = ExplanationParameters(
        masks=arguments.masks,
        cells=arguments.cells,
        batch_size=arguments.batch_size,
        seed=arguments.seed,
        precision=resolve_precision(arguments.precision, classifier.device),
        channels_last=not arguments.nchw,
        target_agreement=arguments.adaptive,
    )

    started = time.perf_counter()
    explanation = explain(classifier, image, arguments.method, parameters)
    seconds = time.perf_counter() - started

    output = (
        arguments.output or StackSettings().home / "explanations" / f"{arguments.image.stem}.{arguments.method}.png"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(render_overlay(image, explanation.saliency, explanation.flat))
    if arguments.map:
        arguments.map.write_bytes(encode_map(explanation.saliency))
    peak = np.unravel_index(int(np.argmax(explanation.saliency)), explanation.saliency.shape)
    rows, columns = explanation.saliency.shape
    print(
        f"{arguments.method} map of {arguments.image}: {rows} x {columns}, "
        f"class {classifier.card.class_names[explanation.target_class]} "
        f"(p {explanation.target_probability:.3f}), peak at row {peak[0]} column {peak[1]}"
        f"{', flat: the masks did not change the prediction' if explanation.flat else ''}, "
        f"{seconds:.1f} s for {explanation.masks_used} masks ({parameters.precision}{_adaptive_outcome(explanation)})"
        f"\noverlay written to {output}"
    )
    return 0


def _adaptive_outcome(explanation) -> str:
    parameters = explanation.parameters
    if parameters.target_agreement is None:
        return ""
    if explanation.masks_used < parameters.masks:
        return f", adaptive: converged after {explanation.masks_used} of {parameters.masks}"
    return f", adaptive: not converged to {parameters.target_agreement} before all {parameters.masks} masks"


def _camera(arguments: argparse.Namespace) -> int:
    from nearcaipi.camera import image_files, run_camera

    if arguments.split:
        files = _split_files(arguments.split)
    elif arguments.paths:
        files = image_files(arguments.paths)
    else:
        raise ValueError("give image files or folders, or --split")
    files = files[: arguments.limit] if arguments.limit else files
    if not re.fullmatch(IDENTIFIER_PATTERN, arguments.camera_id):
        raise ValueError(f"invalid --camera-id {arguments.camera_id!r}: use 1-64 of A-Z a-z 0-9 . _ : -")
    if arguments.rate < 0:
        raise ValueError(f"--rate must be 0 or more images per second, got {arguments.rate}")

    report = run_camera(files, arguments.api, arguments.rate, arguments.camera_id)
    _print_camera_report(report)
    return 0 if report.failed == 0 and report.rejected == 0 else 1


def _split_files(split: str) -> list[Path]:
    records, _ = _open_stack(StackSettings())
    record = records.promoted_model_version()
    if record is None:
        raise LookupError("no model version is promoted, so there is no recorded split to post")
    data_root = Path(record.training["data_root"])
    return [sample.path for sample in restore_splits({split: record.splits[split]}, data_root)[split]]


def _print_camera_report(report) -> None:
    summary = f"camera: {report.posted} posted ({report.nok} NOK), {report.rejected} rejected, {report.failed} failed"
    if report.latencies_ms:
        latencies = report.latencies_ms
        summary += f"; verdict latency median {statistics.median(latencies):.0f} ms, max {max(latencies):.0f} ms"
    print(summary)


def _up(arguments: argparse.Namespace) -> int:
    from nearcaipi.camera import run_camera
    from nearcaipi.stack import Stack, service_commands, wait_until_healthy
    from nearcaipi.workflows import train_evaluate_publish

    settings = TrainerSettings()
    settings.home.mkdir(parents=True, exist_ok=True)
    data_dir = resolve_data_dir(arguments.data or settings.data_dir, settings.home / "datasets")
    records, objects = _open_stack(settings)
    if records.promoted_model_version() is None:
        logger.info(
            "No model version yet: training the initial model (%s profile) on %s", settings.training_profile, data_dir
        )
        train_evaluate_publish(
            data_dir, records, objects, settings.backbone, settings.training_profile, settings.split_seed
        )

    environment = {"NEARCAIPI_HOME": str(settings.home), "NEARCAIPI_DATA_DIR": str(data_dir)}
    stack = Stack(environment)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    api_url = f"http://127.0.0.1:{arguments.port}"
    try:
        for name, command in service_commands("127.0.0.1", arguments.port, arguments.console_port).items():
            stack.start(name, command)
        wait_until_healthy(f"{api_url}/healthz", timeout=120, stack=stack)
        logger.info(
            "API on %s (docs at %s/docs), console on http://127.0.0.1:%d", api_url, api_url, arguments.console_port
        )

        if not arguments.no_camera:
            files = _split_files("test")
            logger.info(
                "Camera simulator: posting %d held-out test images at %.1f per second",
                len(files),
                arguments.camera_rate,
            )
            camera = threading.Thread(
                target=lambda: _print_camera_report(run_camera(files, api_url, arguments.camera_rate, stop=stop)),
                name="camera",
                daemon=True,
            )
            camera.start()

        logger.info("Stack running; press Ctrl-C to stop")
        while not stop.wait(1.0):
            if stack.exited():
                logger.error("A service exited: %s; stopping the stack", stack.exited())
                return 1
        return 0
    finally:
        stack.stop()
        logger.info("Stack stopped")


if __name__ == "__main__":
    sys.exit(main())
