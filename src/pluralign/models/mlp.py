"""Configurable maps f and g: linear, or n layers with GELU, dropout and optional residual blocks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MLPConfig:
    """Shape of a map. ``n_layers=1`` is a single linear layer (the paper's synthetic setting, with
    ``bias=False``); ``n_layers=2`` is the paper's two-layer MLP. ``hidden`` defaults to the input width."""

    n_layers: int = 2
    hidden: int | None = None
    dropout: float = 0.0
    residual: bool = False
    bias: bool = True

    def __post_init__(self) -> None:
        if self.n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {self.n_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.hidden is not None and self.hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {self.hidden}")


class _Block(nn.Module):
    def __init__(self, width: int, dropout: float, residual: bool, bias: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(width, width, bias=bias))
        self.residual = residual

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.body(h) if self.residual else self.body(h)


class MLP(nn.Module):
    """``in_dim -> out_dim``. With ``in_dim == 0`` (no context features) it is a learned constant."""

    def __init__(self, in_dim: int, out_dim: int, config: MLPConfig = MLPConfig()) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        if in_dim == 0:
            # A map from an empty input can only be a constant; a zero-width Linear would not learn it.
            self.constant = nn.Parameter(torch.randn(out_dim) / max(out_dim, 1) ** 0.5)
            self.net = None
            return
        self.constant = None
        if config.n_layers == 1:
            self.net = nn.Linear(in_dim, out_dim, bias=config.bias)
            return
        hidden = config.hidden or in_dim
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden, bias=config.bias)]
        layers += [
            _Block(hidden, config.dropout, config.residual, config.bias) for _ in range(config.n_layers - 2)
        ]
        layers += [nn.GELU(), nn.Dropout(config.dropout), nn.Linear(hidden, out_dim, bias=config.bias)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            return self.constant.expand(*x.shape[:-1], self.out_dim)
        return self.net(x)
