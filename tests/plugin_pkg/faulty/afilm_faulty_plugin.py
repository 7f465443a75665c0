"""A third-party plugin that breaks the model contract in every way tests/test_model_contract.py checks
(installed there into a temporary site directory with a real .dist-info, as tests/test_registry.py
installs ../afilm_example_plugin). `tinyconv` keeps the contract; each other model breaks one part."""

import numpy as np
import torch

from afilm_cli.registry import MODELS


class TinyConv(torch.nn.Module):
    """(B, 1, T) -> (B, 1, T): the input plus a small convolution of it."""

    model_name = "tinyconv"
    length_multiple = 1

    def __init__(self, kernel: int = 3):
        super().__init__()
        self.kernel = kernel
        self.conv = torch.nn.Conv1d(1, 1, kernel, padding=kernel // 2)

    def forward(self, x):
        return x + self.conv(x)

    def config_dict(self):
        return {"kernel": self.kernel}

    def check_length(self, t):
        return None


class Flat(TinyConv):
    model_name = "tinyconv_flat"

    def forward(self, x):
        return super().forward(x)[:, 0, :]  # (B, T): broadcasts against (B, 1, T) labels


class Stereo(TinyConv):
    model_name = "tinyconv_stereo"

    def forward(self, x):
        y = super().forward(x)
        return torch.cat([y, y], dim=1)  # (B, 2, T)


class Short(TinyConv):
    model_name = "tinyconv_short"

    def forward(self, x):
        return super().forward(x)[..., :-1]  # one sample short


class EvalFlat(TinyConv):
    model_name = "tinyconv_evalflat"

    def forward(self, x):  # right while training, (B, T) in eval mode: seen first at validation
        y = super().forward(x)
        return y if self.training else y[:, 0, :]


class NumpyConfig(TinyConv):
    model_name = "tinyconv_numpy_config"

    def config_dict(self):
        return {"kernel": np.int64(self.kernel)}  # checkpoints could not load it


class Misnamed(TinyConv):
    model_name = "something_else"  # registered as tinyconv_misnamed


class Picky(TinyConv):
    model_name = "tinyconv_picky"

    def check_length(self, t):
        if t % 3:
            raise ValueError(f"length {t} is not a multiple of 3")


CLASSES = {"tinyconv": TinyConv, "tinyconv_flat": Flat, "tinyconv_stereo": Stereo, "tinyconv_short": Short,
           "tinyconv_evalflat": EvalFlat, "tinyconv_numpy_config": NumpyConfig, "tinyconv_misnamed": Misnamed,
           "tinyconv_picky": Picky}
for _name, _cls in CLASSES.items():
    MODELS.register(_name, description=f"faulty plugin: {_cls.__name__}")(lambda _cls=_cls, **kw: _cls(**kw))


@MODELS.register("tinyconv_cuda", description="faulty plugin: needs CUDA")
def tinyconv_cuda(**kw):
    raise RuntimeError("needs CUDA")
