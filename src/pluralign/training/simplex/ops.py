"""Tensor pieces the simplex solvers share: projection onto the simplex, segment sums over groups,
the exact logistic loss, per-group Gram matrices, row selection."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: rows x (K*K) entries per chunk when accumulating per-group K x K matrices
_CHUNK_ENTRIES = 1 << 20


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean projection of each row of ``v`` ([..., K]) onto the probability simplex."""
    if v.ndim == 0 or v.shape[-1] == 0:
        raise ValueError(f"project_simplex needs a last dimension of size >= 1, got shape {tuple(v.shape)}")
    if not torch.isfinite(v).all():
        raise ValueError("project_simplex got non-finite values")
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = torch.cumsum(u, dim=-1) - 1
    k = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)
    # The support is the longest prefix of sorted entries staying above the threshold; taking the largest
    # index that passes (not the count) is robust to rounding breaking the monotonicity of the test.
    passes = u * k > css
    rho = torch.where(passes, k, torch.zeros_like(k)).amax(dim=-1, keepdim=True)
    theta = css.gather(-1, rho.long() - 1) / rho
    return torch.clamp(v - theta, min=0)


def segment_sum(values: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    out = values.new_zeros((n_groups, *values.shape[1:]))
    return out.index_add_(0, group, values)


def logistic(margins: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(-m)) to full precision (F.softplus returns its input past a threshold, off by up to
    exp(-20) ~ 2e-9 per row, which would swamp a 1e-9 tolerance)."""
    return F.relu(-margins) + torch.log1p(torch.exp(-margins.abs()))


def mean_loss(
    A: torch.Tensor, group: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor, loss: str
) -> torch.Tensor:
    margins = (A * weights[group]).sum(-1)
    per_row = logistic(margins) if loss == "logistic" else F.relu(1 - margins)
    return segment_sum(per_row, group, len(counts)) / counts.clamp(min=1)


def gram(A: torch.Tensor, coef: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Per group sum_j coef_j A_j A_j^T, [n_groups, K, K]."""
    k = A.shape[1]
    out = A.new_zeros((n_groups, k * k))
    # Chunks small enough to stay in cache: several times faster than one large outer-product tensor.
    step = max(1, _CHUNK_ENTRIES // (k * k))
    for s in range(0, len(A), step):
        a = A[s : s + step]
        outer = ((coef[s : s + step, None] * a)[:, :, None] * a[:, None, :]).reshape(len(a), k * k)
        out.index_add_(0, group[s : s + step], outer)
    return out.reshape(n_groups, k, k)


def rows_of(mask: torch.Tensor, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose group is in ``mask``, and their group renumbered 0..mask.sum()-1."""
    local = torch.cumsum(mask.long(), 0) - 1
    rows = mask[group].nonzero().squeeze(1)
    return rows, local[group[rows]]
