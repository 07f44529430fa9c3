"""A small convolutional classifier over 2-D grids, whose penultimate layer is the feature space
of the Fréchet distance (trained once per dataset by ``metrics.features`` and cached)."""
from __future__ import annotations

from torch import Tensor, nn


class GridClassifier(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 32, features: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * width), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * width), nn.GELU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * width, features), nn.GELU(),
        )  # fmt: skip
        self.logits = nn.Linear(features, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.body(x))
