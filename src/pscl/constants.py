"""Numbers that several parts of pscl must agree on.

The ground floor of the package: it imports nothing from pscl, so data readers, losses, metrics,
checks, prediction and reporting can all take their values from here without importing each other.
"""

from __future__ import annotations

# The mask value of a pixel without a label: no loss, no metric and no class counts it.
IGNORE_INDEX = 255

# The UNet halves its input three times (pscl.models.base), so its bottleneck is 1/8 of the input.
BOTTLENECK_STRIDE = 8
# The least image or crop side the network takes: a smaller side leaves no pixel at the bottleneck.
# It is also the smallest data.crop_size the range check allows.
MIN_IMAGE_SIDE = BOTTLENECK_STRIDE
# A crop under this side leaves the bottleneck 1x1 px, and BatchNorm cannot train on a single value
# per channel, so a batch of such crops needs two of them.
SINGLE_CROP_SIDE = 2 * BOTTLENECK_STRIDE
