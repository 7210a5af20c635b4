"""Embeddings from a classifier's penultimate layer, and near hits and near misses by cosine similarity.

The near hit of an image is the most similar image of the same class, its near miss the most similar image of
the other class. Similarity is cos(a, b) = a.b / (|a| |b|) between penultimate-layer embeddings (the input of
the last linear layer: 512 global-average-pooled values for ResNet-18).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nearcaipi.models import Classifier


def _last_linear_layer(network: nn.Module) -> nn.Linear:
    linear_layers = [module for module in network.modules() if isinstance(module, nn.Linear)]
    if not linear_layers:
        raise ValueError(f"{type(network).__name__} has no linear layer to take embeddings from")
    return linear_layers[-1]


@torch.inference_mode()
def embed(classifier: Classifier, batch: torch.Tensor, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Embed raw-pixel images and classify them in the same forward pass.

    Args:
        batch: (B, 3, S, S) float32 in [0, 1], or uint8 in [0, 255].

    Returns:
        Embeddings (B, D) float32 and p_nok (B,) float32.
    """
    captured: list[torch.Tensor] = []
    p_nok = []
    with classifier.lock:
        hook = _last_linear_layer(classifier.network).register_forward_hook(
            lambda _module, inputs, _output: captured.append(inputs[0].detach().flatten(1).cpu())
        )
        try:
            for start in range(0, len(batch), batch_size):
                chunk = batch[start : start + batch_size]
                if chunk.dtype == torch.uint8:
                    chunk = chunk.float() / 255.0
                p_nok.append(classifier.probabilities(chunk)[:, 1].cpu())
        finally:
            hook.remove()

    if not captured:
        return np.empty((0, 0), dtype=np.float32), np.empty(0, dtype=np.float32)
    return torch.cat(captured).numpy().astype(np.float32), torch.cat(p_nok).numpy().astype(np.float32)


@dataclass(frozen=True)
class Neighbour:
    """One image of the index and its cosine similarity to the query."""

    key: str
    similarity: float


@dataclass(frozen=True)
class NearestNeighbours:
    """The near hit (same class) and near miss (other class) of a query; None where the index has no such image."""

    near_hit: Neighbour | None
    near_miss: Neighbour | None


class SimilarityIndex:
    """Exact cosine-similarity search over the embeddings of one model version.

    A query is one matrix-vector product over the unit-normalised codebook, O(N x D); building normalises the
    codebook once, O(N x D) as well. Exact search returns the same neighbours as a brute-force comparison.
    """

    def __init__(self, keys: Sequence[str], embeddings: np.ndarray, classes: Sequence[int]) -> None:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(keys) != embeddings.shape[0] or len(classes) != embeddings.shape[0]:
            raise ValueError(
                f"got {len(keys)} keys, {len(classes)} classes and embeddings of shape {embeddings.shape}; "
                "expected one key and one class per embedding row"
            )
        if len(set(keys)) != len(keys):
            raise ValueError("keys of a similarity index must be unique")

        self.keys = list(keys)
        self.classes = np.asarray(classes, dtype=np.int64)
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        self.unit = embeddings / np.maximum(norms, 1e-12)
        self._position = {key: index for index, key in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.keys)

    def extend(self, keys: Sequence[str], embeddings: np.ndarray, classes: Sequence[int]) -> None:
        """Add images; only the new rows are normalised, so adding k images to N costs O(k x D) plus one copy."""
        addition = SimilarityIndex(keys, embeddings, classes)
        if any(key in self._position for key in addition.keys):
            raise ValueError("keys of a similarity index must be unique")

        offset = len(self.keys)
        self.keys.extend(addition.keys)
        self.classes = np.concatenate([self.classes, addition.classes])
        self.unit = np.concatenate([self.unit, addition.unit]) if offset else addition.unit
        self._position.update({key: offset + index for index, key in enumerate(addition.keys)})

    def contains(self, key: str) -> bool:
        return key in self._position

    def similarities(self, embedding: np.ndarray) -> np.ndarray:
        """Cosine similarity of one embedding (D,) to every indexed image. Returns (N,) float32 in [-1, 1]."""
        query = np.asarray(embedding, dtype=np.float32)
        return self.unit @ (query / max(float(np.linalg.norm(query)), 1e-12))

    def nearest(self, embedding: np.ndarray, query_class: int, exclude: str | None = None) -> NearestNeighbours:
        """Find the near hit and near miss of an embedding whose class is ``query_class``.

        ``exclude`` names the query itself when it is indexed, so that it is not its own near hit.
        """
        similarity = self.similarities(embedding)
        if exclude is not None and exclude in self._position:
            similarity = similarity.copy()
            similarity[self._position[exclude]] = -np.inf

        same = self.classes == query_class
        return NearestNeighbours(
            near_hit=self._best(similarity, same),
            near_miss=self._best(similarity, ~same),
        )

    def nearest_to_key(self, key: str, query_class: int) -> NearestNeighbours:
        """Near hit and near miss of an indexed image, never the image itself."""
        return self.nearest(self.unit[self._position[key]], query_class, exclude=key)

    def _best(self, similarity: np.ndarray, candidates: np.ndarray) -> Neighbour | None:
        allowed = np.where(candidates & np.isfinite(similarity))[0]
        if len(allowed) == 0:
            return None
        best = allowed[int(np.argmax(similarity[allowed]))]
        return Neighbour(self.keys[best], float(similarity[best]))
