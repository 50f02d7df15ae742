"""The eight classic CIFAR-10 CNNs and the one registry that names them.

>>> model = create_model("resnet18", num_classes=10)
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from models.densenet import densenet121
from models.dpn import dpn92
from models.googlenet import googlenet
from models.mobilenet import mobilenet
from models.resnet import resnet18
from models.senet import senet18
from models.shufflenet import shufflenetg2
from models.vgg import vgg

__all__ = ["MODELS", "UnknownModelError", "create_model"]


class UnknownModelError(ValueError):
    """Raised by :func:`create_model` for a name that is not in :data:`MODELS`; its message lists
    the known ones. (``models`` depends on nothing else of the project: the commands check a
    model name in their config, where a bad one becomes a one-line error.)"""


#: Model name -> constructor taking ``num_classes`` as a keyword.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "vgg": vgg,
    "resnet18": resnet18,
    "googlenet": googlenet,
    "densenet121": densenet121,
    "mobilenet": mobilenet,
    "dpn92": dpn92,
    "shufflenetg2": shufflenetg2,
    "senet18": senet18,
}


def create_model(name: str, num_classes: int = 10) -> nn.Module:
    """Build the registered model ``name`` with a ``num_classes``-way classifier."""
    try:
        constructor = MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise UnknownModelError(f"unknown model {name!r}; known models: {known}") from None
    return constructor(num_classes=num_classes)
