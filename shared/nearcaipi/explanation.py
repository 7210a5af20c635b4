"""RISE and InvRISE saliency maps from randomised masks.

RISE (Petsiuk, Das, Saenko, BMVC 2018) scores a pixel by the model's confidence in the target class c over the
masks that keep it::

    S_c(x) = 1 / (N p) * sum_i f_c(I * M_i) * M_i(x)

InvRISE, the inverted variant of the NearCAIPI paper, scores a pixel by how much hiding it makes the model stop
predicting c, counting each mask only where it hides the pixel::

    q(x) = 1/N * sum_i (1 - M_i(x))                                          (Eq. 1)
    S~_c(x) = 1 / (N q(x)) * sum_i (1 - f_c(I * M_i)) * (1 - M_i(x))         (Eq. 2)

Masks: N binary s x s grids whose cells are kept with probability p, each upsampled bilinearly to
(s + 1) x cell size and cropped at a random offset, so values lie in [0, 1]. Masking multiplies raw pixels
(hidden pixels turn black) before normalisation. Maps are computed at the model's input resolution and
upsampled once to the image's own H x W.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nearcaipi.models import Classifier

Method = Literal["invrise", "rise"]
METHODS: tuple[str, ...] = ("invrise", "rise")

ScoreFunction = Callable[[torch.Tensor], torch.Tensor]
"""Class probabilities of raw-pixel images: (B, 3, h, w) float32 in [0, 1] -> (B, classes)."""

# When the target probability varies less than this over all masks, the model ignored the masking and the map
# carries no evidence: it is reported as flat. Softmax outputs of an indifferent or saturated model are equal
# to the last float32 bit, so the bound sits well above float32 noise and far below any real response.
FLAT_SCORE_SPREAD = 1e-6

PRECISIONS: tuple[str, ...] = ("float32", "bfloat16", "float16")

# Adaptive mode: four mask groups give three split-half estimates, and the lowest one counts. A single
# estimate above the target can be luck, so the rule must hold at this many consecutive chunks.
ADAPTIVE_GROUPS = 4
ADAPTIVE_CONFIRMATIONS = 3
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ExplanationParameters:
    """Parameters of the random masks; the defaults are the method paper's (N = 1000, s = 8, p = 0.5)."""

    masks: int = 1000
    cells: int = 8
    keep_probability: float = 0.5
    batch_size: int = 100
    seed: int = 0
    precision: str = "float32"
    """float32, bfloat16 or float16: the data type of the masked forward passes (see ``resolve_precision``)."""
    channels_last: bool = False
    """Run the convolutions on NHWC tensors, which oneDNN and cuDNN process faster than NCHW."""
    target_agreement: float | None = None
    """Adaptive mode: stop drawing masks once the map is predicted to correlate at least this well (Pearson)
    with the map that all ``masks`` would give. None draws every mask."""
    min_masks: int = 200
    """Adaptive mode: the fewest masks drawn before the stopping rule is checked."""

    def __post_init__(self) -> None:
        if self.masks < 1:
            raise ValueError(f"masks must be at least 1, got {self.masks}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.target_agreement is not None and not 0.0 < self.target_agreement < 1.0:
            raise ValueError(f"target_agreement must lie strictly between 0 and 1, got {self.target_agreement}")
        if self.min_masks < 2:
            raise ValueError(f"min_masks must be at least 2, got {self.min_masks}")
        if self.cells < 2:
            raise ValueError(f"cells must be at least 2, got {self.cells}")
        if not 0.0 < self.keep_probability < 1.0:
            raise ValueError(f"keep_probability must lie strictly between 0 and 1, got {self.keep_probability}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


@dataclass
class Explanation:
    """A saliency map and how it was made."""

    saliency: np.ndarray
    """(H, W) float32 at the image's own resolution; higher means more relevant to the target class."""
    method: str
    target_class: int
    target_probability: float
    flat: bool
    score_spread: float
    parameters: ExplanationParameters
    masks_used: int
    """Masks drawn: ``parameters.masks``, or fewer when the adaptive mode stopped early."""


@dataclass(frozen=True)
class MaskBank:
    """The random draws behind N masks; cheap to keep (N x s x s values) and rendered in chunks."""

    grids: torch.Tensor
    """(N, s, s) float32 in {0, 1}: 1 keeps the cell."""
    offsets: torch.Tensor
    """(N, 2) int64: crop offsets (row, column) in [0, cell height) x [0, cell width)."""
    height: int
    width: int

    @classmethod
    def draw(cls, parameters: ExplanationParameters, height: int, width: int) -> MaskBank:
        """Draw all grids and offsets up front, so the same seed gives the same masks whatever the chunk size."""
        generator = torch.Generator().manual_seed(parameters.seed)
        shape = (parameters.masks, parameters.cells, parameters.cells)
        grids = (torch.rand(shape, generator=generator) < parameters.keep_probability).float()
        cell_height, cell_width = math.ceil(height / parameters.cells), math.ceil(width / parameters.cells)
        offsets = torch.stack(
            [
                torch.randint(0, cell_height, (parameters.masks,), generator=generator),
                torch.randint(0, cell_width, (parameters.masks,), generator=generator),
            ],
            dim=1,
        )
        return cls(grids, offsets, height, width)

    def __len__(self) -> int:
        return self.grids.shape[0]

    def render(self, start: int, stop: int) -> torch.Tensor:
        """Render masks start..stop-1. Returns (stop - start, H, W) float32 in [0, 1]."""
        grids = self.grids[start:stop]
        offsets = self.offsets[start:stop]
        cells = grids.shape[-1]
        cell_height, cell_width = math.ceil(self.height / cells), math.ceil(self.width / cells)

        upsampled = F.interpolate(
            grids.unsqueeze(1), size=((cells + 1) * cell_height, (cells + 1) * cell_width), mode="bilinear"
        ).squeeze(1)
        # Bilinear weights can overshoot 1 by a float32 rounding step; 1 - M must never turn negative.
        upsampled.clamp_(0.0, 1.0)

        # One gather crops every mask at its own offset.
        rows = offsets[:, 0, None] + torch.arange(self.height)
        columns = offsets[:, 1, None] + torch.arange(self.width)
        index = torch.arange(len(grids))[:, None, None]
        return upsampled[index, rows[:, :, None], columns[:, None, :]]

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), size):
            yield self.render(start, min(start + size, len(self)))


@dataclass
class SaliencyResult:
    saliency: torch.Tensor
    """(h, w) float32 at the model's input resolution."""
    flat: bool
    spread: float
    """max - min of f_c over the masks drawn."""
    masks_used: int


class _Accumulator:
    """Running sums of RISE or InvRISE over a subset of the masks."""

    def __init__(self, method: str, pixels: int, device: torch.device) -> None:
        self.method = method
        self.weighted = torch.zeros(pixels, dtype=torch.float64, device=device)
        self.hidden = torch.zeros(pixels, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, scores: torch.Tensor, flat_masks: torch.Tensor) -> None:
        # One float32 matrix product per chunk, summed into float64 so that N chunks add no rounding drift.
        if self.method == "rise":
            self.weighted += (scores @ flat_masks).double()
        else:
            hidden = 1.0 - flat_masks
            self.weighted += ((1.0 - scores) @ hidden).double()
            self.hidden += hidden.sum(dim=0).double()
        self.count += len(scores)

    def saliency(self, keep_probability: float) -> torch.Tensor:
        if self.method == "rise":
            return self.weighted / (max(self.count, 1) * keep_probability)
        # Eq. 2 with N q(x) = sum_i (1 - M_i(x)); a pixel no mask ever hid gets no evidence.
        return torch.where(self.hidden > 0, self.weighted / self.hidden.clamp(min=1e-12), 0.0)


def pearson(first: torch.Tensor, second: torch.Tensor) -> float:
    """Pearson correlation of two maps; NaN when either is constant."""
    first = first.flatten().double() - first.double().mean()
    second = second.flatten().double() - second.double().mean()
    denominator = float(first.norm() * second.norm())
    return float(first @ second) / denominator if denominator > 0 else math.nan


def predicted_agreement(half_correlation: float, masks_drawn: int, masks_total: int) -> float:
    """Predict the Pearson correlation of the map of the first n masks with the map of all N masks.

    The two halves of the masks drawn so far give independent maps. Their correlation r is the split-half
    reliability, and the Spearman-Brown formula turns it into the reliability of the whole draw,
    R_n = 2 r / (1 + r), and of k = N / n times as many masks, R_N = k R_n / (1 + (k - 1) R_n). The full map
    contains the first n masks, so the two maps share that noise and correlate as sqrt(R_n / R_N), which is
    sqrt((1 + (k - 1) R_n) / k). A half correlation of zero or less (or NaN) shows no signal yet and gives 0.
    """
    if math.isnan(half_correlation) or half_correlation <= 0.0:
        return 0.0
    reliability = 2.0 * half_correlation / (1.0 + half_correlation)
    factor = masks_total / masks_drawn
    return math.sqrt((1.0 + (factor - 1.0) * reliability) / factor)


def compute_saliency(
    score_function: ScoreFunction,
    image: torch.Tensor,
    target_class: int,
    method: Method,
    parameters: ExplanationParameters,
    on_chunk: Callable[[int, torch.Tensor], None] | None = None,
) -> SaliencyResult:
    """Compute a RISE or InvRISE map at the input's resolution, optionally stopping early (adaptive mode).

    Args:
        score_function: class probabilities of raw-pixel images.
        image: (1, 3, h, w) float32 in [0, 1], the image at the model's input size.
        target_class: the class c whose evidence is mapped.
        method: "invrise" or "rise".
        on_chunk: called after each chunk with the masks drawn so far and the current (h, w) map.
    """
    return compute_saliency_batch(score_function, image, [target_class], method, parameters, on_chunk)[0]


@dataclass
class _ImageProgress:
    """Sums and stopping state of one image in a batch."""

    groups: list[_Accumulator]
    lowest: float = math.inf
    highest: float = -math.inf
    agreeing_checks: int = 0
    done: bool = False

    def add(self, scores: torch.Tensor, flat_masks: torch.Tensor, first_mask: int) -> None:
        self.lowest = min(self.lowest, scores.min().item())
        self.highest = max(self.highest, scores.max().item())
        for index, group in enumerate(self.groups):
            # Mask number first_mask + j belongs to group (first_mask + j) mod len(groups).
            start = (index - first_mask) % len(self.groups)
            group.add(scores[start :: len(self.groups)], flat_masks[start :: len(self.groups)])


def compute_saliency_batch(
    score_function: ScoreFunction,
    images: torch.Tensor,
    target_classes: Sequence[int],
    method: Method,
    parameters: ExplanationParameters,
    on_chunk: Callable[[int, torch.Tensor], None] | None = None,
) -> list[SaliencyResult]:
    """Compute the maps of several images at once; each gets the map it would get alone.

    All images share the same N masks and move through them in step, so one forward batch contains masked copies
    of every image still running. A batch keeps about ``parameters.batch_size`` masked images: with k images
    running, each chunk draws batch_size / k masks. In the adaptive mode an image that has converged leaves
    the batch, and the others get its share.

    Args:
        images: (K, 3, h, w) float32 in [0, 1], at the model's input size.
        target_classes: the class to map for each image.
        on_chunk: called after each chunk with the masks drawn so far and the first image's current map.
    """
    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
    if len(target_classes) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(target_classes)} target classes")

    count, _, height, width = images.shape
    bank = MaskBank.draw(parameters, height, width)
    adaptive = parameters.target_agreement is not None
    # The adaptive mode sums masks i = 0, 1, 2, 3 (mod 4) apart; any two groups form one half of the draw.
    group_count = ADAPTIVE_GROUPS if adaptive else 1
    progress = [
        _ImageProgress([_Accumulator(method, height * width, images.device) for _ in range(group_count)])
        for _ in range(count)
    ]
    masks_used = [len(bank)] * count
    drawn = 0

    with torch.inference_mode():
        while drawn < len(bank):
            running = [index for index in range(count) if not progress[index].done]
            if not running:
                break
            stop = min(drawn + max(1, parameters.batch_size // len(running)), len(bank))
            masks = bank.render(drawn, stop).to(images.device)
            masked = (images[running, None] * masks[None, :, None]).reshape(-1, 3, height, width)
            probabilities = score_function(masked).float().reshape(len(running), len(masks), -1)
            flat_masks = masks.reshape(len(masks), -1)
            for slot, index in enumerate(running):
                progress[index].add(probabilities[slot, :, target_classes[index]], flat_masks, drawn)
            drawn = stop

            if on_chunk is not None and not progress[0].done:
                current = _combine(progress[0].groups).saliency(parameters.keep_probability)
                on_chunk(drawn, current.float().reshape(height, width))
            if not adaptive or not parameters.min_masks <= drawn < len(bank):
                continue
            for index in running:
                state = progress[index]
                agreement = predicted_agreement(_split_half_correlation(state.groups, parameters), drawn, len(bank))
                state.agreeing_checks = state.agreeing_checks + 1 if agreement >= parameters.target_agreement else 0
                if state.agreeing_checks >= ADAPTIVE_CONFIRMATIONS:
                    state.done = True
                    masks_used[index] = drawn

    return [
        _finish(state, method, parameters, height, width, used)
        for state, used in zip(progress, masks_used, strict=True)
    ]


def _finish(
    state: _ImageProgress, method: str, parameters: ExplanationParameters, height: int, width: int, masks_used: int
) -> SaliencyResult:
    spread = state.highest - state.lowest
    saliency = _combine(state.groups).saliency(parameters.keep_probability)
    flat = spread < FLAT_SCORE_SPREAD
    if flat:
        # An indifferent model's RISE map is pure mask-sampling noise; report its expected value, a constant.
        constant = (state.lowest + state.highest) / 2 if method == "rise" else 1.0 - (state.lowest + state.highest) / 2
        saliency = torch.full_like(saliency, constant)
    return SaliencyResult(saliency.float().reshape(height, width).cpu(), flat, spread, masks_used)


def _combine(groups: list[_Accumulator]) -> _Accumulator:
    if len(groups) == 1:
        return groups[0]
    combined = _Accumulator(groups[0].method, len(groups[0].weighted), groups[0].weighted.device)
    for group in groups:
        combined.weighted += group.weighted
        combined.hidden += group.hidden
        combined.count += group.count
    return combined


def _split_half_correlation(groups: list[_Accumulator], parameters: ExplanationParameters) -> float:
    """Lowest correlation between the two halves of the three ways to pair four mask groups.

    The lowest rather than the mean keeps the stopping rule on the safe side of its noisy estimate.
    """
    correlations = []
    for first, second in (((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2))):
        half_a = _combine([groups[first[0]], groups[first[1]]]).saliency(parameters.keep_probability)
        half_b = _combine([groups[second[0]], groups[second[1]]]).saliency(parameters.keep_probability)
        correlations.append(pearson(half_a, half_b))
    return float(np.min(correlations))


def saliency_at_input(
    score_function: ScoreFunction,
    image: torch.Tensor,
    target_class: int,
    method: Method,
    parameters: ExplanationParameters,
) -> tuple[torch.Tensor, bool, float]:
    """Compute a RISE or InvRISE map at the input's resolution; see ``compute_saliency``.

    Returns:
        The map (h, w) float32, whether it is flat, and the spread (max - min) of f_c over the masks.
    """
    result = compute_saliency(score_function, image, target_class, method, parameters)
    return result.saliency, result.flat, result.spread


def resolve_precision(requested: str, device: torch.device) -> str:
    """Turn "auto" into the fastest precision whose maps match float32 on this device.

    auto gives float16 on a CUDA GPU, bfloat16 on a CPU with native bfloat16 (AVX512-BF16 or AMX), else
    float32. Other values are returned unchanged once checked.
    """
    if requested != "auto":
        if requested not in PRECISIONS:
            raise ValueError(f"unknown precision {requested!r}; choose auto or one of {', '.join(PRECISIONS)}")
        return requested
    if device.type == "cuda":
        return "float16"
    if device.type == "cpu" and cpu_has_native_bfloat16():
        return "bfloat16"
    return "float32"


def cpu_has_native_bfloat16() -> bool:
    """Return whether this CPU computes in bfloat16 natively; elsewhere oneDNN emulates it, slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def make_score_function(
    classifier: Classifier, precision: str = "float32", channels_last: bool = False
) -> ScoreFunction:
    """Class probabilities of raw-pixel batches in the given precision and memory layout.

    Channels-last converts the classifier's network in place; its results do not change, and other callers
    that pass NCHW tensors keep working. Softmax is always taken in float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    network = classifier.network
    if channels_last:
        network.to(memory_format=torch.channels_last)
    device_type = classifier.device.type

    def score(batch: torch.Tensor) -> torch.Tensor:
        inputs = classifier.normalize(batch.to(classifier.device))
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if precision == "float32":
                logits = network(inputs)
            else:
                with torch.autocast(device_type=device_type, dtype=_DTYPES[precision]):
                    logits = network(inputs)
        return torch.softmax(logits.float(), dim=1)

    return score


def upsample_map(saliency: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Resize a map to an image's resolution. (h, w) -> (height, width) float32."""
    resized = F.interpolate(saliency[None, None], size=(height, width), mode="bilinear", align_corners=False)
    return resized[0, 0].numpy().astype(np.float32)


def explain(
    classifier: Classifier,
    image: np.ndarray,
    method: Method = "invrise",
    parameters: ExplanationParameters = ExplanationParameters(),
    target_class: int | None = None,
) -> Explanation:
    """Explain a classifier's verdict on one image.

    Args:
        image: (H, W, 3) uint8 RGB.
        target_class: the class to map; by default the predicted one.

    Returns:
        An Explanation whose saliency map is (H, W) float32.
    """
    height, width = image.shape[:2]
    model_input = classifier.to_input(image)
    probabilities = classifier.probabilities(model_input)[0]
    if target_class is None:
        target_class = int(probabilities.argmax())

    score_function = make_score_function(classifier, parameters.precision, parameters.channels_last)
    result = compute_saliency(score_function, model_input, target_class, method, parameters)
    return Explanation(
        saliency=upsample_map(result.saliency, height, width),
        method=method,
        target_class=target_class,
        target_probability=float(probabilities[target_class]),
        flat=result.flat,
        score_spread=result.spread,
        parameters=parameters,
        masks_used=result.masks_used,
    )


def explain_many(
    classifier: Classifier,
    images: Sequence[np.ndarray],
    method: Method = "invrise",
    parameters: ExplanationParameters = ExplanationParameters(),
) -> list[Explanation]:
    """Explain several images in shared forward batches; each gets the map that ``explain`` would give it.

    Args:
        images: (H, W, 3) uint8 RGB each; sizes may differ.
    """
    if not images:
        return []
    model_inputs = torch.cat([classifier.to_input(image) for image in images])
    probabilities = classifier.probabilities(model_inputs)
    targets = probabilities.argmax(dim=1).tolist()

    score_function = make_score_function(classifier, parameters.precision, parameters.channels_last)
    results = compute_saliency_batch(score_function, model_inputs, targets, method, parameters)
    return [
        Explanation(
            saliency=upsample_map(result.saliency, *image.shape[:2]),
            method=method,
            target_class=target,
            target_probability=float(probabilities[index, target]),
            flat=result.flat,
            score_spread=result.spread,
            parameters=parameters,
            masks_used=result.masks_used,
        )
        for index, (image, target, result) in enumerate(zip(images, targets, results, strict=True))
    ]


def render_overlay(image: np.ndarray, saliency: np.ndarray, flat: bool, opacity: float = 0.5) -> bytes:
    """Blend a jet-coloured saliency map over the image and encode it as PNG.

    The map is stretched to the full colour range unless it is flat. A flat map adds no colour, so that noise
    is never shown as evidence.

    Args:
        image: (H, W, 3) uint8 RGB.
        saliency: (H, W) float32.
    """
    if image.shape[:2] != saliency.shape:
        raise ValueError(f"image is {image.shape[:2]} but the saliency map is {saliency.shape}")

    base = image.astype(np.float32) / 255.0
    spread = float(saliency.max() - saliency.min())
    if flat or spread <= 0.0:
        blended = base
    else:
        from matplotlib import colormaps

        normalized = (saliency - saliency.min()) / spread
        heat = colormaps["jet"](normalized)[..., :3].astype(np.float32)
        blended = (1.0 - opacity) * base + opacity * heat

    buffer = io.BytesIO()
    Image.fromarray((blended * 255.0).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_map(saliency: np.ndarray) -> bytes:
    """Serialise a map as a NumPy .npy file: (H, W) float32."""
    buffer = io.BytesIO()
    np.save(buffer, saliency.astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


def decode_map(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
