"""The shape rule of the DARTS networks (the search's supernet and the retrained network): how
many cells, positive sizes, and channels PC-DARTS can split."""
from __future__ import annotations

from core.errors import UserError

#: Reduction cells sit at one and two thirds of the depth, so a network needs at least this many cells.
MIN_LAYERS = 3


def check_network_shape(layers: int, partial_channels: int = 1, **positive: int) -> None:
    """The one shape check of the DARTS networks (configs and the space itself): at least
    :data:`MIN_LAYERS` cells, every ``positive`` value (channels, ...) at least 1, and the channels
    a multiple of PC-DARTS's ``partial_channels`` K (an edge's operations see 1/K of them)."""
    if layers < MIN_LAYERS:
        raise UserError(f"layers: {layers} is not allowed; at least {MIN_LAYERS} (reduction cells sit at one "
                        "and two thirds of the depth)")
    for name, value in {**positive, "partial_channels": partial_channels}.items():
        if value < 1:
            raise UserError(f"{name}: {value} is not allowed; it must be at least 1")
    channels = positive.get("channels", partial_channels)
    if channels % partial_channels:
        raise UserError(f"partial_channels: {partial_channels} is not allowed with channels {channels}; the channels "
                        "must be a multiple of it (each edge's operations see channels / partial_channels of them)")
