"""An example third-party afilm plugin: one model, registered through the `afilm.models` entry point."""

import torch

from afilm_cli.registry import MODELS


class Identity2x(torch.nn.Module):
    model_name = "example_identity"
    length_multiple = 1

    def __init__(self, gain: float = 1.0):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(float(gain)))

    def forward(self, x):
        return x * self.gain

    def config_dict(self):
        return {"gain": float(self.gain.detach())}

    def check_length(self, t):
        return None


@MODELS.register("example_identity", description="example plugin model (scaled identity)")
def example_identity(**kw):
    return Identity2x(**kw)
