"""Grad-CAM, a model-specific baseline beside the model-agnostic RISE and InvRISE maps.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017) weighs the feature maps A^k of a late convolutional layer by how much the score y_c
of the target class c (the logit, before softmax) rises with them::

    alpha_k = 1 / Z * sum_ij d y_c / d A^k_ij        (the spatially averaged gradient, Z = h x w positions)
    L_c = ReLU(sum_k alpha_k A^k)

The map has the layer's coarse grid: 4 x 4 for ResNet-18 and 7 x 7 for AlexNet at 128 px input. It is
upsampled bilinearly to the model input, then to the image's own H x W like the RISE maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nearcaipi.explanation import upsample_map
from nearcaipi.models import Classifier


def find_gradcam_layer(network: nn.Module) -> tuple[str, nn.Module]:
    """Find the layer whose output Grad-CAM weighs. Returns its qualified name and the module.

    - ResNet-18 and ResNeXt-50: ``layer4``, the last residual stage, taken after its skip connection and ReLU.
    - AlexNet and VGG-16, and any other network without ``layer4``: the last ``nn.Conv2d`` in module order
      (``features.10`` in AlexNet, ``features.28`` in VGG-16). torchvision follows it with an in-place ReLU,
      which overwrites the recorded output, so the map weighs the rectified features.

    Raises ValueError for a network without a convolution.
    """
    layer4 = getattr(network, "layer4", None)
    if isinstance(layer4, nn.Module):
        return "layer4", layer4

    convolutions = [(name, module) for name, module in network.named_modules() if isinstance(module, nn.Conv2d)]
    if not convolutions:
        raise ValueError(f"{type(network).__name__} has no nn.Conv2d layer, so Grad-CAM has no feature map to weigh")
    return convolutions[-1]


def gradcam_at_input(
    classifier: Classifier, image: torch.Tensor, target_class: int, layer: nn.Module | None = None
) -> tuple[torch.Tensor, bool]:
    """Compute a Grad-CAM map at the model input's resolution.

    Args:
        image: (1, 3, S, S) float32 in [0, 1], raw pixels at the model's input size. It must not be an
            inference-mode tensor, because the gradient flows through the network's forward pass.
        target_class: the class c whose logit is differentiated.
        layer: the module whose output is weighed; by default the one find_gradcam_layer picks.

    Returns:
        The map (S, S) float32, non-negative, on the CPU, and whether it is flat. A map is flat when the
        weighted features are equal everywhere, most often all zero: no feature raises the target score.
    """
    network = classifier.network
    if layer is None:
        _, layer = find_gradcam_layer(network)

    recorded: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _module, _inputs, output: recorded.append(output))
    try:
        # The classifier's own probabilities() runs in inference mode, which records no gradients.
        with torch.inference_mode(False), torch.enable_grad():
            logits = network(classifier.normalize(image.to(classifier.device)))
            (gradients,) = torch.autograd.grad(logits[0, target_class], recorded[-1])
    finally:
        handle.remove()

    activations = recorded[-1].detach()
    channel_weights = gradients.mean(dim=(2, 3), keepdim=True)
    grid = F.relu((channel_weights * activations).sum(dim=1))[0].float().cpu()

    flat = not bool(grid.max() > grid.min())
    height, width = image.shape[-2:]
    return torch.from_numpy(upsample_map(grid, height, width)), flat
