"""Configurable maps f and g: linear, or n layers with GELU, dropout and optional residual blocks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MLPConfig:
    """Shape of a map. ``n_layers=1`` is a single linear layer (the paper's synthetic setting, with
    ``bias=False``); ``n_layers=2`` is the paper's two-layer MLP. ``hidden`` defaults to the input width.

    ``residual``: at 2 layers, the paper's "2-layer MLP with residual connection" (App. D.5/D.6):
    ``x + MLP(x)``, which needs the output width to equal the input width (the paper fixes d to the
    embedding width for it); at 3 or more layers, each hidden block is ``h + block(h)``. A single linear
    layer has no hidden width, dropout or residual: asking for them is an error, not a silent no-op."""

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
        if self.n_layers == 1:
            ignored = [
                name
                for name, value in (
                    ("hidden", self.hidden),
                    ("dropout", self.dropout),
                    ("residual", self.residual),
                )
                if value not in (None, 0.0, False)
            ]
            if ignored:
                raise ValueError(
                    f"a 1-layer (linear) map has no {', '.join(ignored)}: use n_layers >= 2 or leave "
                    f"{'it' if len(ignored) == 1 else 'them'} at the default"
                )


def linear(in_dim: int, out_dim: int, bias: bool, generator: torch.Generator | None) -> nn.Linear:
    """``nn.Linear`` with its default initialisation (U(-1/sqrt(in), 1/sqrt(in)) for weight and bias)
    drawn from ``generator`` instead of the process-wide RNG, which stays untouched."""
    layer = nn.Linear(in_dim, out_dim, bias=bias, device="meta").to_empty(device="cpu")
    bound = 1.0 / max(in_dim, 1) ** 0.5
    with torch.no_grad():
        for param in layer.parameters():
            param.uniform_(-bound, bound, generator=generator)
    return layer


class _Block(nn.Module):
    def __init__(
        self, width: int, dropout: float, residual: bool, bias: bool, generator: torch.Generator | None
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.GELU(), nn.Dropout(dropout), linear(width, width, bias, generator))
        self.residual = residual

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.body(h) if self.residual else self.body(h)


class MLP(nn.Module):
    """``in_dim -> out_dim``. With ``in_dim == 0`` (no context features) it is a learned constant.
    Parameters are drawn from ``generator`` (None: a fresh default-seeded one), never the global RNG."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        config: MLPConfig = MLPConfig(),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.config = in_dim, out_dim, config
        generator = torch.Generator() if generator is None else generator
        if in_dim == 0:
            # A map from an empty input can only be a constant; a zero-width Linear would not learn it.
            self.constant = nn.Parameter(torch.randn(out_dim, generator=generator) / max(out_dim, 1) ** 0.5)
            self.net = None
            self.skip = False
            return
        self.constant = None
        self.skip = False
        if config.n_layers == 1:
            self.net = linear(in_dim, out_dim, config.bias, generator)
            return
        hidden = config.hidden or in_dim
        layers: list[nn.Module] = [linear(in_dim, hidden, config.bias, generator)]
        layers += [
            _Block(hidden, config.dropout, config.residual, config.bias, generator)
            for _ in range(config.n_layers - 2)
        ]
        layers += [nn.GELU(), nn.Dropout(config.dropout), linear(hidden, out_dim, config.bias, generator)]
        self.net = nn.Sequential(*layers)
        #: the paper's residual 2-layer MLP: x + MLP(x)
        self.skip = config.residual and config.n_layers == 2
        if self.skip and in_dim != out_dim:
            raise ValueError(
                f"a residual 2-layer map adds its input to its output, so its output width must equal its "
                f"input width ({in_dim}); got {out_dim} (set dim={in_dim}, as the paper does)"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            return self.constant.expand(*x.shape[:-1], self.out_dim)
        return x + self.net(x) if self.skip else self.net(x)
