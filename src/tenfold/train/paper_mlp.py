"""The paper's network: 784-392-50-10, fully connected, tanh on every layer (§3).

Parameters (names are what the packets and ``model.safetensors`` carry):

    fc1.weight (392, 784)  fc1.bias (392,)
    fc2.weight (50, 392)   fc2.bias (50,)
    fc3.weight (10, 50)    fc3.bias (10,)      327,880 float32 values in all

The output layer is tanh too ("the activation functions of all neurons were tanh").
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tenfold.errors import ConfigError

__all__ = ["LAYER_SIZES", "PaperMLP", "init_weights"]

#: Units per layer, input first.
LAYER_SIZES: tuple[int, ...] = (784, 392, 50, 10)


class PaperMLP(nn.Module):
    """784-392-50-10 MLP with tanh activations everywhere.

    Input ``(batch, 784)`` float32 pixels in [0, 1]; output ``(batch, 10)`` in (-1, 1).

    Example:
        >>> model = PaperMLP()
        >>> init_weights(model, "glorot-uniform", torch.Generator().manual_seed(0))
        >>> model(torch.zeros(2, 784)).shape
        torch.Size([2, 10])
    """

    def __init__(self, sizes: tuple[int, ...] = LAYER_SIZES) -> None:
        super().__init__()
        self.sizes = tuple(sizes)
        self.fc1 = nn.Linear(sizes[0], sizes[1])
        self.fc2 = nn.Linear(sizes[1], sizes[2])
        self.fc3 = nn.Linear(sizes[2], sizes[3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 784) -> (B, 10)``."""
        return torch.tanh(self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x))))))


def init_weights(model: nn.Module, scheme: str, generator: torch.Generator) -> None:
    """Initialise every ``nn.Linear`` of ``model`` in place, reproducibly from ``generator``.

    Schemes (the paper does not give its initialisation):

    * ``glorot-uniform``: W ~ U(-a, a), a = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio
      2010, derived for tanh networks); biases 0.
    * ``lecun-normal``: W ~ N(0, 1 / fan_in) (LeCun et al. 1998, "Efficient BackProp", for
      tanh); biases 0.
    * ``torch-default``: nn.Linear's default, W and b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    * ``normal-0.01``: W ~ N(0, 0.01^2) whatever the layer's size, biases 0: the common
      practice of the paper's time (e.g. Krizhevsky et al. 2012 used this scale), before
      fan-scaled schemes took over; its weights start narrow and stay more peaked, closer
      to the low entropies the paper reports.

    Zero biases are constant tensors: the codec sends them as one value (docs/DESIGN.md, erratum 3).
    """
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.Linear):
                continue
            fan_out, fan_in = module.weight.shape
            if scheme == "glorot-uniform":
                a = math.sqrt(6.0 / (fan_in + fan_out))
                module.weight.uniform_(-a, a, generator=generator)
                module.bias.zero_()
            elif scheme == "lecun-normal":
                module.weight.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
                module.bias.zero_()
            elif scheme == "normal-0.01":
                module.weight.normal_(0.0, 0.01, generator=generator)
                module.bias.zero_()
            elif scheme == "torch-default":
                bound = 1.0 / math.sqrt(fan_in)
                module.weight.uniform_(-bound, bound, generator=generator)
                module.bias.uniform_(-bound, bound, generator=generator)
            else:
                raise ConfigError(f"init: unknown scheme {scheme!r}")
