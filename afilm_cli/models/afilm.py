"""AFiLM (Rakotonirina 2021): the U-Net with transformer modulation, at paper size and CPU presets."""

from __future__ import annotations

from afilm_cli.models.unet import UNetConfig, make_builder
from afilm_cli.registry import MODELS

AFILM = UNetConfig(modulation="afilm")
# CPU presets: same architecture (kernel sizes, dilation, blocks, dropout), narrower convs, a
# shallower transformer with a smaller feed-forward, fewer heads.
AFILM_SMALL = UNetConfig(modulation="afilm", channels=(16, 32, 64, 64), bottleneck_channels=64,
                         transformer_layers=2, heads=4, ff_dim=256)
AFILM_MEDIUM = UNetConfig(modulation="afilm", channels=(32, 64, 128, 128), bottleneck_channels=128,
                          transformer_layers=2, heads=4, ff_dim=512)
AFILM_TINY = UNetConfig(modulation="afilm", channels=(4, 8, 16, 16), bottleneck_channels=16,
                        transformer_layers=1, heads=2, ff_dim=32)

MODELS.register("afilm", description="AFiLM, paper size (transformer modulation)")(
    make_builder("afilm", AFILM))
MODELS.register("afilm_small", description="AFiLM, CPU-trainable preset")(
    make_builder("afilm_small", AFILM_SMALL))
MODELS.register("afilm_medium", description="AFiLM, twice afilm_small's width")(
    make_builder("afilm_medium", AFILM_MEDIUM))
MODELS.register("afilm_tiny", description="AFiLM, tiny preset for tests and smoke runs")(
    make_builder("afilm_tiny", AFILM_TINY))
