"""Learning from reviews: the training data that a selection strategy makes of the reviewers' corrections.

The reviewed images join training with their reviewers' labels. Strategies with neighbours (near_al, near_caipi)
add the near hit and near miss of each image whose prediction the reviewer corrected, labelled by their class in
the pool. Strategies with refutations (caipi, near_caipi) add refutations generated from the reviewed images (and,
for near_caipi, from the neighbours too). Each refutation is stored as a PNG with its lineage.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nearcaipi.data import load_rgb
from nearcaipi.imaging import decode_image
from nearcaipi.pool import CLASS_OF_LABEL, LABEL_OF_CLASS, PoolIndex
from nearcaipi.refutations import box_to_mask, generate_refutations
from nearcaipi.selection import check_strategy, plan_additions, uses_neighbours
from nearcaipi.storage.objects import ObjectStore
from nearcaipi.storage.records import RecordStore, RefutationRecord, ReviewRecord
from nearcaipi.training import resize_image

logger = logging.getLogger(__name__)


class NothingToLearnError(ValueError):
    """A training run from reviews was requested, but no image has been reviewed yet."""


@dataclass
class ReviewAdditions:
    """Training images made from reviews, at the model's input size, and what they came from."""

    images: list[torch.Tensor] = field(default_factory=list)
    """(3, S, S) uint8 each."""
    labels: list[int] = field(default_factory=list)
    review_ids: list[int] = field(default_factory=list)
    reviewed: int = 0
    neighbours: int = 0
    refutations: int = 0

    def summary(self, strategy: str) -> dict[str, int | str]:
        return {
            "strategy": strategy,
            "reviewed_images": self.reviewed,
            "near_hits_and_misses": self.neighbours,
            "refutations": self.refutations,
        }


def defect_mask(review: ReviewRecord, height: int, width: int) -> np.ndarray:
    """Paint a review's defect boxes into an (H, W) bool mask; it is all False when no box was marked."""
    mask = np.zeros((height, width), dtype=bool)
    for left, top, right, bottom in review.defect_boxes or []:
        # Review boxes exclude their right and bottom edges; box_to_mask takes inclusive VOC-style boxes.
        mask |= box_to_mask((left, top, right - 1, bottom - 1), (height, width))
    return mask


def encode_mask(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG")
    return buffer.getvalue()


def collect_review_additions(
    records: RecordStore,
    objects: ObjectStore,
    strategy: str,
    model_version: int,
    input_size: int,
    training_run_id: int,
    backgrounds: Sequence[Path],
    rng: np.random.Generator,
    max_image_pixels: int,
) -> ReviewAdditions:
    """Make the training additions of all reviews so far under ``strategy``.

    ``model_version`` is the promoted version whose pool codebook gives the near hits and misses; the pool must
    be embedded under it. ``backgrounds`` are images (OK images of the product, or textures) that defects are
    placed on.

    Raises:
        NothingToLearnError: no image has been reviewed.
    """
    check_strategy(strategy)
    reviews = records.latest_reviews()
    if not reviews:
        raise NothingToLearnError("no image has been reviewed yet; review some images in the console first")

    ordered = sorted(reviews.values(), key=lambda review: review.id)
    reviewed = [review.image_id for review in ordered]
    predicted = {review.image_id: CLASS_OF_LABEL[review.predicted_label] for review in ordered}
    true_class = {review.image_id: CLASS_OF_LABEL[review.label] for review in ordered}

    pool: PoolIndex | None = None
    if uses_neighbours(strategy):
        pool = PoolIndex(records, model_version)
        pool.refresh()
        # Reviewed images predicted under an older version are missing from this version's codebook; they
        # cannot be looked up, but they still join training below.
        missing = [image_id for image_id in reviewed if not pool.contains(image_id)]
        if missing:
            logger.warning("%d reviewed images have no embedding under model version %d", len(missing), model_version)
    plan = plan_additions(
        strategy,
        [image_id for image_id in reviewed if pool is None or pool.contains(image_id)],
        predicted,
        true_class,
        pool.labelled_index() if pool is not None else None,
    )

    additions = ReviewAdditions(review_ids=[review.id for review in ordered])
    pixels_of: dict[str, np.ndarray] = {}
    labels_of: dict[str, int] = {}
    masks_of: dict[str, np.ndarray] = {}

    def load(image_id: str) -> np.ndarray:
        image = records.get_image(image_id)
        assert image is not None
        return decode_image(objects.get(image.object_key), max_image_pixels).pixels

    for review in ordered:
        pixels = load(review.image_id)
        pixels_of[review.image_id] = pixels
        labels_of[review.image_id] = true_class[review.image_id]
        masks_of[review.image_id] = defect_mask(review, *pixels.shape[:2])
    for image_id in plan.neighbours:
        pixels = load(image_id)
        pixels_of[image_id] = pixels
        labels_of[image_id] = CLASS_OF_LABEL[pool.label_of(image_id)] if pool is not None else 0
        masks_of[image_id] = np.zeros(pixels.shape[:2], dtype=bool)

    for image_id in reviewed + plan.neighbours:
        additions.images.append(resize_image(pixels_of[image_id], input_size))
        additions.labels.append(labels_of[image_id])
    additions.reviewed = len(reviewed)
    additions.neighbours = len(plan.neighbours)

    def pick_background() -> tuple[np.ndarray, str]:
        path = backgrounds[int(rng.integers(len(backgrounds)))]
        return load_rgb(path), str(path)

    lineage: list[RefutationRecord] = []
    for image_id in plan.refute:
        refutations = generate_refutations(
            pixels_of[image_id],
            masks_of[image_id],
            labels_of[image_id],
            image_id,
            rng,
            pick_background if backgrounds else None,
        )
        for number, refutation in enumerate(refutations):
            key = f"refutations/run-{training_run_id}/{image_id}-{number}-{refutation.generator}.png"
            buffer = io.BytesIO()
            Image.fromarray(refutation.pixels).save(buffer, format="PNG")
            objects.put(key, buffer.getvalue(), "image/png")
            lineage.append(
                RefutationRecord(
                    source_image_id=image_id,
                    review_id=reviews[image_id].id if image_id in reviews else None,
                    training_run_id=training_run_id,
                    generator=refutation.generator,
                    parameters=refutation.parameters,
                    label=LABEL_OF_CLASS[refutation.label],
                    object_key=key,
                )
            )
            additions.images.append(resize_image(refutation.pixels, input_size))
            additions.labels.append(refutation.label)
    records.add_refutations(lineage)
    additions.refutations = len(lineage)

    logger.info(
        "Training run %d (%s): %d reviewed images, %d near hits and misses, %d refutations",
        training_run_id,
        strategy,
        additions.reviewed,
        additions.neighbours,
        additions.refutations,
    )
    return additions
