"""Near hits and near misses on hand-made embeddings, checked against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nearcaipi.models import Classifier, ModelCard, build_network
from nearcaipi.similarity import Neighbour, SimilarityIndex, embed


@pytest.fixture
def index() -> SimilarityIndex:
    embeddings = np.array(
        [
            [1.0, 0.0, 0.0],  # ok-a
            [0.9, 0.1, 0.0],  # ok-b
            [0.0, 1.0, 0.0],  # ok-c
            [0.8, 0.0, 0.6],  # nok-a
            [0.0, 0.0, 1.0],  # nok-b
        ]
    )
    return SimilarityIndex(["ok-a", "ok-b", "ok-c", "nok-a", "nok-b"], embeddings, [0, 0, 0, 1, 1])


def test_near_hit_and_miss_of_known_set(index: SimilarityIndex) -> None:
    neighbours = index.nearest(np.array([1.0, 0.05, 0.1]), query_class=0)

    assert neighbours.near_hit.key == "ok-a"
    assert neighbours.near_miss.key == "nok-a"


def test_indexed_image_is_not_its_own_hit(index: SimilarityIndex) -> None:
    neighbours = index.nearest_to_key("ok-a", query_class=0)

    assert neighbours.near_hit == Neighbour("ok-b", pytest.approx(0.9 / np.sqrt(0.82)))
    assert neighbours.near_miss.key == "nok-a"
    assert neighbours.near_miss.similarity == pytest.approx(0.8)


def test_class_without_members_has_no_neighbour() -> None:
    only_ok = SimilarityIndex(["a", "b"], np.eye(2), [0, 0])

    neighbours = only_ok.nearest(np.array([1.0, 0.0]), query_class=0)

    assert neighbours.near_hit.key == "a"
    assert neighbours.near_miss is None


def test_index_matches_brute_force() -> None:
    rng = np.random.default_rng(5)
    embeddings = rng.normal(size=(300, 16)).astype(np.float32)
    classes = rng.integers(0, 2, 300)
    keys = [f"image-{i}" for i in range(300)]
    index = SimilarityIndex(keys, embeddings, classes)

    for query, query_class in zip(rng.normal(size=(20, 16)), rng.integers(0, 2, 20), strict=True):
        cosine = embeddings @ query / (np.linalg.norm(embeddings, axis=1) * np.linalg.norm(query))
        expected_hit = keys[int(np.argmax(np.where(classes == query_class, cosine, -np.inf)))]
        expected_miss = keys[int(np.argmax(np.where(classes != query_class, cosine, -np.inf)))]

        neighbours = index.nearest(query, int(query_class))

        assert neighbours.near_hit.key == expected_hit
        assert neighbours.near_miss.key == expected_miss


def test_mismatched_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="expected one key and one class per embedding row"):
        SimilarityIndex(["a"], np.zeros((2, 3)), [0, 1])


def test_resnet_embeddings_have_512_values() -> None:
    network, _ = build_network("resnet18", pretrained=False)
    classifier = Classifier(network, ModelCard(backbone="resnet18", input_size=32))

    embeddings, p_nok = embed(classifier, torch.rand(5, 3, 32, 32), batch_size=2)

    assert embeddings.shape == (5, 512)
    assert p_nok.shape == (5,)
    expected = classifier.probabilities(torch.zeros(1, 3, 32, 32))[0, 1].item()
    _, zero_p_nok = embed(classifier, torch.zeros(1, 3, 32, 32))
    assert zero_p_nok[0] == pytest.approx(expected, abs=1e-6)
