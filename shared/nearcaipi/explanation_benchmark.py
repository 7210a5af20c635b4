"""Speed, memory and fidelity of RISE and InvRISE: the benchmark behind ``nearcaipi benchmark-explanation``.

Timing uses a ResNet-18 (or another backbone) at a fixed input size. The weights do not change the cost, so
untrained weights serve when no checkpoint is given. Fidelity and the adaptive trade-off need a trained model
and real images: they run on the checkpoint's own input size and on the images given.

Figures, each the median of ``repeats`` runs:

- floor: N plain forward passes of one image batch, float32, NCHW, batches of ``batch_size``. This is how the
  original RISE code spends its time, with mask generation and accumulation left out.
- own floor: the same N passes in the fastest configuration's precision and layout.
- InvRISE and RISE end to end (masks, forward passes, accumulation, upsampling to the image's size) in float32
  NCHW and in the fastest configuration.
"""

from __future__ import annotations

import csv
import logging
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nearcaipi.explanation import (
    ExplanationParameters,
    compute_saliency,
    explain,
    explain_many,
    make_score_function,
    pearson,
)
from nearcaipi.models import Classifier, ModelCard, build_network

logger = logging.getLogger(__name__)

REFERENCE_MASKS = 4000
PAGE_SIZE = 4096


class PeakMemory:
    """Peak resident memory of this process while the block runs, sampled every few milliseconds (Linux)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def resident_bytes() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * PAGE_SIZE

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self.resident_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.peak_bytes = self.resident_bytes()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self.resident_bytes())


@dataclass
class Timing:
    name: str
    seconds: list[float]
    peak_bytes: int

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@dataclass
class BenchmarkReport:
    """Everything the benchmark measured; ``markdown`` renders it."""

    settings: dict[str, object]
    timings: dict[str, Timing] = field(default_factory=dict)
    fidelity: list[dict[str, object]] = field(default_factory=list)
    adaptive: list[dict[str, object]] = field(default_factory=list)
    trade_off: list[dict[str, object]] = field(default_factory=list)
    throughput: list[dict[str, object]] = field(default_factory=list)

    def ratio(self, numerator: str, denominator: str) -> float:
        return self.timings[numerator].median / self.timings[denominator].median

    def markdown(self) -> str:
        lines = ["| configuration | median s | runs (s) | peak RSS MiB |", "| --- | --- | --- | --- |"]
        for timing in self.timings.values():
            runs = ", ".join(f"{value:.2f}" for value in timing.seconds)
            lines.append(f"| {timing.name} | {timing.median:.2f} | {runs} | {timing.peak_bytes / 2**20:.0f} |")
        lines.append("")
        for method in ("invrise", "rise"):
            fast = f"{method}_fast"
            if fast in self.timings:
                lines.append(
                    f"- {method}: b/a = {self.ratio(fast, 'floor_float32'):.3f} (fastest / float32 floor), "
                    f"b/c = {self.ratio(fast, 'floor_fast'):.3f} (fastest / its own floor)"
                )
            if f"{method}_float32" in self.timings:
                lines.append(
                    f"- {method} float32 NCHW: {self.ratio(f'{method}_float32', 'floor_float32'):.3f} of its floor"
                )
        if self.throughput:
            lines += ["", "| queue depth | images | seconds | explanations per minute |", "| --- | --- | --- | --- |"]
            lines += [
                f"| {row['depth']} | {row['images']} | {row['seconds']:.1f} | {row['per_minute']:.1f} |"
                for row in self.throughput
            ]
        if self.fidelity:
            lines += ["", "| image | configuration | Pearson with float32 NCHW |", "| --- | --- | --- |"]
            lines += [f"| {row['image']} | {row['configuration']} | {row['pearson']:.4f} |" for row in self.fidelity]
        if self.adaptive:
            lines += [
                "",
                "| image | masks used | passes / N | Pearson with N | Pearson with N = 4000 | N map with N = 4000 |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            lines += [
                f"| {row['image']} | {row['masks_used']} | {row['fraction']:.2f} | {row['pearson_full']:.4f} | "
                f"{row['pearson_reference']:.4f} | {row['full_vs_reference']:.4f} |"
                for row in self.adaptive
            ]
        return "\n".join(lines) + "\n"


def _median_timing(name: str, run: Callable[[], object], repeats: int) -> Timing:
    run()  # warm-up: oneDNN picks its kernels on the first call of each shape
    seconds = []
    with PeakMemory() as memory:
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - started)
    logger.info("%s: median %.2f s over %d runs", name, statistics.median(seconds), repeats)
    return Timing(name, seconds, memory.peak_bytes)


def _forward_passes(score: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, passes: int) -> None:
    done = 0
    while done < passes:
        count = min(len(batch), passes - done)
        score(batch[:count])
        done += count


def _untrained_classifier(backbone: str, input_size: int) -> Classifier:
    torch.manual_seed(0)
    network, _ = build_network(backbone, pretrained=False)
    return Classifier(network, ModelCard(backbone=backbone, input_size=input_size))


def time_explanations(
    backbone: str,
    input_size: int,
    image: np.ndarray,
    fast: ExplanationParameters,
    repeats: int,
    report: BenchmarkReport,
    include_float32_methods: bool = True,
) -> None:
    """Time the floors and the end-to-end explanations of one image; adds to ``report.timings``."""
    plain = replace(fast, precision="float32", channels_last=False, target_agreement=None)
    fast = replace(fast, target_agreement=None)

    reference = _untrained_classifier(backbone, input_size)
    batch = reference.to_input(image).expand(fast.batch_size, -1, -1, -1).contiguous()
    float32_score = make_score_function(reference, "float32", channels_last=False)
    report.timings["floor_float32"] = _median_timing(
        "floor: float32 NCHW forward passes", lambda: _forward_passes(float32_score, batch, fast.masks), repeats
    )
    if include_float32_methods:
        for method in ("invrise", "rise"):
            report.timings[f"{method}_float32"] = _median_timing(
                f"{method} float32 NCHW", lambda method=method: explain(reference, image, method, plain), repeats
            )

    fastest = _untrained_classifier(backbone, input_size)
    fast_score = make_score_function(fastest, fast.precision, fast.channels_last)
    layout = "channels-last" if fast.channels_last else "NCHW"
    report.timings["floor_fast"] = _median_timing(
        f"own floor: {fast.precision} {layout} forward passes",
        lambda: _forward_passes(fast_score, batch, fast.masks),
        repeats,
    )
    for method in ("invrise", "rise"):
        report.timings[f"{method}_fast"] = _median_timing(
            f"{method} {fast.precision} {layout}", lambda method=method: explain(fastest, image, method, fast), repeats
        )


def measure_throughput(
    backbone: str,
    input_size: int,
    images: Sequence[np.ndarray],
    parameters: ExplanationParameters,
    depths: Sequence[int],
    report: BenchmarkReport,
) -> None:
    """Explanations per minute when the worker takes ``depth`` queued images at a time.

    Only the computation counts (load, masks, forward passes, upsampling), not the queue or storage.
    """
    classifier = _untrained_classifier(backbone, input_size)
    explain_many(classifier, list(images[:1]), "invrise", replace(parameters, masks=parameters.batch_size))
    for depth in depths:
        started = time.perf_counter()
        for start in range(0, len(images), depth):
            explain_many(classifier, list(images[start : start + depth]), "invrise", parameters)
        seconds = time.perf_counter() - started
        report.throughput.append(
            {"depth": depth, "images": len(images), "seconds": seconds, "per_minute": 60.0 * len(images) / seconds}
        )
        logger.info("Queue depth %d: %d explanations in %.1f s", depth, len(images), seconds)


def measure_fidelity(
    classifier: Classifier,
    images: Sequence[tuple[str, np.ndarray]],
    configurations: dict[str, ExplanationParameters],
    report: BenchmarkReport,
) -> None:
    """Pearson correlation of each configuration's InvRISE map with the float32 NCHW map, per image."""
    for name, pixels in tqdm(images, desc="fidelity"):
        baseline_parameters = next(iter(configurations.values()))
        baseline = explain(
            classifier, pixels, "invrise", replace(baseline_parameters, precision="float32", channels_last=False)
        )
        for configuration, parameters in configurations.items():
            candidate = explain(classifier, pixels, "invrise", parameters)
            report.fidelity.append(
                {
                    "image": name,
                    "configuration": configuration,
                    "pearson": pearson(torch.from_numpy(candidate.saliency), torch.from_numpy(baseline.saliency)),
                }
            )


def measure_adaptive(
    classifier: Classifier,
    images: Sequence[tuple[str, np.ndarray]],
    parameters: ExplanationParameters,
    report: BenchmarkReport,
) -> None:
    """Compare adaptive maps with the full-N map and an N = 4000 reference, and trace the trade-off curve.

    The curve records, after every chunk of the full-N run, the correlation of the map so far with the reference.
    """
    full_parameters = replace(parameters, target_agreement=None)
    score = make_score_function(classifier, parameters.precision, parameters.channels_last)
    for name, pixels in tqdm(images, desc="adaptive"):
        model_input = classifier.to_input(pixels)
        target = int(classifier.probabilities(model_input)[0].argmax())
        reference = compute_saliency(
            score, model_input, target, "invrise", replace(full_parameters, masks=REFERENCE_MASKS, seed=10_000)
        ).saliency

        def record(
            masks_drawn: int, current: torch.Tensor, name: str = name, reference: torch.Tensor = reference
        ) -> None:
            report.trade_off.append(
                {"image": name, "masks": masks_drawn, "pearson_reference": pearson(current, reference)}
            )

        full = compute_saliency(score, model_input, target, "invrise", full_parameters, on_chunk=record).saliency
        adaptive = compute_saliency(score, model_input, target, "invrise", parameters)
        report.adaptive.append(
            {
                "image": name,
                "masks_used": adaptive.masks_used,
                "fraction": adaptive.masks_used / parameters.masks,
                "pearson_full": pearson(adaptive.saliency, full),
                "pearson_reference": pearson(adaptive.saliency, reference),
                "full_vs_reference": pearson(full, reference),
            }
        )


def write_report(report: BenchmarkReport, output_dir: Path) -> None:
    """Write report.md, timings.csv, fidelity.csv, adaptive.csv, trade_off.csv and trade_off.png."""
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = "\n".join(f"- {key}: {value}" for key, value in report.settings.items())
    (output_dir / "report.md").write_text(f"# Explanation benchmark\n\n{settings}\n\n{report.markdown()}")

    with (output_dir / "timings.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "configuration", "median_seconds", "runs", "peak_rss_bytes"])
        for key, timing in report.timings.items():
            runs = " ".join(f"{value:.3f}" for value in timing.seconds)
            writer.writerow([key, timing.name, f"{timing.median:.3f}", runs, timing.peak_bytes])
    tables = (
        ("fidelity", report.fidelity),
        ("adaptive", report.adaptive),
        ("trade_off", report.trade_off),
        ("throughput", report.throughput),
    )
    for name, rows in tables:
        if rows:
            with (output_dir / f"{name}.csv").open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)

    if report.trade_off:
        _plot_trade_off(report, output_dir / "trade_off.png")


def _plot_trade_off(report: BenchmarkReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for image in dict.fromkeys(row["image"] for row in report.trade_off):
        rows = [row for row in report.trade_off if row["image"] == image]
        axes.plot([row["masks"] for row in rows], [row["pearson_reference"] for row in rows], alpha=0.6)
    for row in report.adaptive:
        axes.scatter(row["masks_used"], row["pearson_reference"], color="black", zorder=3, s=18)
    axes.set_xlabel("masks drawn (forward passes)")
    axes.set_ylabel(f"Pearson with the N = {REFERENCE_MASKS} map")
    axes.set_title("InvRISE convergence; dots: where the adaptive mode stopped")
    axes.set_ylim(bottom=max(0.0, min(row["pearson_reference"] for row in report.trade_off) - 0.02), top=1.0)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
