"""Data parallel training with torch.distributed (torchrun; gloo on CPU, NCCL on GPU).

Every rank holds the whole model and the same epoch order (same seed). Each global batch of B rows is cut
into ``world_size`` contiguous shards; a rank computes the loss *sum* of its shard divided by B, and the
gradients are summed over ranks with one all-reduce of a flat buffer. That sum is the gradient of the mean
loss over the global batch, so training follows the single-process trajectory up to float summation order.

Why one flat all-reduce rather than wrapping the model in ``DistributedDataParallel``: the models are
called through ``margins`` (not ``forward``), BTL has a frozen user table, and a step touches only some
users' rows. The dense user-table gradient is all-reduced as is (zeros for the users a step does not
touch); the lazy user update (training/optim.py) then moves the users of the *global* batch, which every
rank knows, so every rank's weights and optimizer state stay identical.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank and world size (1 when torch.distributed is not running)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> DistContext:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of a global batch (contiguous keeps context-grouped runs together)."""
        if not self.active:
            return rows
        return rows.tensor_split(self.world_size)[self.rank]

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (they should already agree: same seed)."""
        if not self.active:
            return
        with torch.no_grad():
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def all_reduce_gradients(
        self, params: list[torch.Tensor], extras: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Sum the gradients of ``params`` over ranks in place (missing gradients count as zeros).

        ``extras`` (a few float32 numbers, e.g. the shard's loss sum) ride along in the same all-reduce;
        their sums over ranks are returned.
        """
        if not self.active:
            return extras
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
        if extras is not None:
            parts.append(extras.reshape(-1).to(parts[0] if parts else extras))
        flat = torch.cat(parts)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            part = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
            if p.grad is None:
                p.grad = part.clone()
            else:
                p.grad.copy_(part)
        return None if extras is None else flat[offset:].view_as(extras)

    def all_reduce_sum(self, *tensors: torch.Tensor) -> None:
        """Sum each tensor over ranks in place."""
        if not self.active:
            return
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def init_from_env() -> DistContext:
    """Join the job that torchrun describes in the environment (WORLD_SIZE > 1); otherwise run alone.

    The backend is NCCL when CUDA is available, else gloo. Returns the process's ``DistContext``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or not dist.is_available():
        return DistContext.current()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        logger.info("joined %s process group: rank %d of %d", backend, dist.get_rank(), dist.get_world_size())
    return DistContext.current()


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
