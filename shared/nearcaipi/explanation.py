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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ExplanationParameters:
    """Parameters of the random masks; the defaults are the method paper's (N = 1000, s = 8, p = 0.5)."""

    masks: int = 1000
    cells: int = 8
    keep_probability: float = 0.5
    batch_size: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.masks < 1:
            raise ValueError(f"masks must be at least 1, got {self.masks}")
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


def saliency_at_input(
    score_function: ScoreFunction,
    image: torch.Tensor,
    target_class: int,
    method: Method,
    parameters: ExplanationParameters,
) -> tuple[torch.Tensor, bool, float]:
    """Compute a RISE or InvRISE map at the input's resolution.

    Args:
        score_function: class probabilities of raw-pixel images.
        image: (1, 3, h, w) float32 in [0, 1], the image at the model's input size.
        target_class: the class c whose evidence is mapped.
        method: "invrise" or "rise".

    Returns:
        The map (h, w) float32, whether it is flat, and the spread (max - min) of f_c over the masks.
    """
    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")

    _, _, height, width = image.shape
    bank = MaskBank.draw(parameters, height, width)
    weighted_sum = torch.zeros(height * width, dtype=torch.float64, device=image.device)
    hidden_sum = torch.zeros(height * width, dtype=torch.float64, device=image.device)
    lowest, highest = math.inf, -math.inf

    with torch.inference_mode():
        for masks in bank.chunks(parameters.batch_size):
            masks = masks.to(image.device)
            scores = score_function(image * masks.unsqueeze(1))[:, target_class].double()
            lowest, highest = min(lowest, scores.min().item()), max(highest, scores.max().item())
            flat_masks = masks.reshape(len(masks), -1).double()
            if method == "rise":
                weighted_sum += scores @ flat_masks
            else:
                hidden = 1.0 - flat_masks
                weighted_sum += (1.0 - scores) @ hidden
                hidden_sum += hidden.sum(dim=0)

    spread = highest - lowest
    if method == "rise":
        saliency = weighted_sum / (len(bank) * parameters.keep_probability)
    else:
        # Eq. 2 with N q(x) = sum_i (1 - M_i(x)); a pixel no mask ever hid gets no evidence.
        saliency = torch.where(hidden_sum > 0, weighted_sum / hidden_sum.clamp(min=1e-12), 0.0)

    flat = spread < FLAT_SCORE_SPREAD
    if flat:
        # An indifferent model's RISE map is pure mask-sampling noise; report its expected value, a constant.
        constant = (lowest + highest) / 2 if method == "rise" else 1.0 - (lowest + highest) / 2
        saliency = torch.full_like(saliency, constant)
    return saliency.float().reshape(height, width).cpu(), flat, spread


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

    saliency, flat, spread = saliency_at_input(classifier.probabilities, model_input, target_class, method, parameters)
    return Explanation(
        saliency=upsample_map(saliency, height, width),
        method=method,
        target_class=target_class,
        target_probability=float(probabilities[target_class]),
        flat=flat,
        score_spread=spread,
        parameters=parameters,
    )


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
