"""TFiLM (Birnbaum et al. 2019): the same U-Net with LSTM modulation, at paper size and CPU presets."""

from __future__ import annotations

from afilm_cli.models.unet import UNetConfig, make_builder
from afilm_cli.registry import MODELS

TFILM = UNetConfig(modulation="tfilm", final_init_std=1e-3)
TFILM_SMALL = UNetConfig(modulation="tfilm", final_init_std=1e-3, channels=(16, 32, 64, 64),
                         bottleneck_channels=64)
TFILM_TINY = UNetConfig(modulation="tfilm", final_init_std=1e-3, channels=(4, 8, 16, 16),
                        bottleneck_channels=16)

MODELS.register("tfilm", description="TFiLM, paper size (LSTM modulation)")(
    make_builder("tfilm", TFILM))
MODELS.register("tfilm_small", description="TFiLM, CPU-trainable preset")(
    make_builder("tfilm_small", TFILM_SMALL))
MODELS.register("tfilm_tiny", description="TFiLM, tiny preset for tests and smoke runs")(
    make_builder("tfilm_tiny", TFILM_TINY))
