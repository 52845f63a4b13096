"""Small reference networks built from plain ``torch.nn`` modules, for the example
(``examples/train_large_kernel.py``), the model benchmark (``benchmarks/torch_model.py``) and
the tests. They contain no fftbp module: :func:`fftbp.torch.convert` decides what to swap.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LargeKernelBlock", "ResNet18Style", "replknet_style", "slak_stage"]


class LargeKernelBlock(nn.Module):
    """RepLKNet's block: BN, 1x1 mixing, ReLU, depthwise k x k, 1x1 mixing, residual.

    ``small`` adds SLaK's parallel small depthwise kernel (its 5x5 branch) to the large one.
    """

    def __init__(self, channels: int, kernel: int, small: int = 0) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.pre = nn.Conv2d(channels, channels, 1)
        self.large = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.small = (
            nn.Conv2d(channels, channels, small, padding=small // 2, groups=channels)
            if small
            else None
        )
        self.post = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.pre(self.norm(x)))
        mixed = self.large(h) + (self.small(h) if self.small is not None else 0)
        return x + self.post(torch.relu(mixed))


def replknet_style(
    in_channels: int = 1,
    channels: int = 16,
    kernel: int = 31,
    blocks: int = 2,
    classes: int = 10,
) -> nn.Sequential:
    """A RepLKNet-style classifier: 3x3 stem, large-kernel depthwise blocks, pooled linear head."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1),
        nn.ReLU(),
        *(LargeKernelBlock(channels, kernel) for _ in range(blocks)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, classes),
    )


def slak_stage(channels: int = 64, kernel: int = 51, blocks: int = 1) -> nn.Sequential:
    """A SLaK-style stage: depthwise 51x51 blocks with a parallel 5x5 depthwise branch."""
    return nn.Sequential(*(LargeKernelBlock(channels, kernel, small=5) for _ in range(blocks)))


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.down(x))


class ResNet18Style(nn.Module):
    """ResNet-18's layout: 7x7 stride-2 stem, max-pool, four stages of two basic blocks."""

    def __init__(self, classes: int = 10, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn = nn.BatchNorm2d(width)
        chans = [width, 2 * width, 4 * width, 8 * width]
        layers = []
        cin = width
        for i, c in enumerate(chans):
            layers += [_Basic(cin, c, 1 if i == 0 else 2), _Basic(c, c, 1)]
            cin = c
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.max_pool2d(torch.relu(self.bn(self.stem(x))), 3, 2, 1)
        h = self.layers(h)
        return self.head(h.mean(dim=(2, 3)))
