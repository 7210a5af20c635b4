"""A full-resolution camera image explained with N = 4000 stays within a fixed memory bound."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# The child process reports its own peak, so the memory of the test process does not count.
CHILD = r"""
import json, resource, sys
import numpy as np
from nearcaipi.config import ExplanationSettings
from nearcaipi.explanation import explain, render_overlay
from nearcaipi.imaging import read_image_file
from nearcaipi.models import Classifier, ModelCard, build_network

network, _ = build_network("resnet18", pretrained=False)
classifier = Classifier(network, ModelCard(backbone="resnet18", input_size=224))
parameters = ExplanationSettings(masks=4000).parameters("cpu")
pixels = read_image_file(sys.argv[1]).pixels
explanation = explain(classifier, pixels, "invrise", parameters)
overlay = render_overlay(pixels, explanation.saliency, explanation.flat)
print(json.dumps({
    "shape": list(explanation.saliency.shape),
    "masks_used": explanation.masks_used,
    "finite": bool(np.isfinite(explanation.saliency).all()),
    "overlay_bytes": len(overlay),
    "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
}))
"""

MEMORY_LIMIT_KIB = 2 * 1024 * 1024


def test_large_image_explained_under_two_gib(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (2048, 2448, 3), dtype=np.uint8)
    path = tmp_path / "line-camera.png"
    Image.fromarray(pixels).save(path)

    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=600, check=False
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["shape"] == [2048, 2448]
    assert result["masks_used"] == 4000
    assert result["finite"]
    assert result["overlay_bytes"] > 0
    assert result["peak_kib"] < MEMORY_LIMIT_KIB, f"peak {result['peak_kib'] / 1024:.0f} MiB"
