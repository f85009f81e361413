"""Data-parallel training over several processes: ``torchrun`` + DistributedDataParallel.

``torchrun --nproc-per-node N -m orchestration.cli train ...`` starts N copies of the command and tells each
its ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (and where to meet: ``MASTER_ADDR``/``MASTER_PORT``)
through the environment. ``process_group`` reads them and joins the group: gloo on CPU, NCCL on CUDA (one
GPU per local rank). Without them (a plain ``ctrflow train``) there is no group and nothing changes.

How the work is split, so that N workers compute what one process would with the same global batch:
every worker draws the same shuffle and the same id dropout over the global batch (same seeds), then
keeps its contiguous share of the rows; DDP averages the gradients, and with equal shares the average of
the workers' mean losses is the global batch's mean loss. Validation and early stopping run on every
worker over the whole validation slice: the weights are identical everywhere, so every worker takes the
same decisions without exchanging them. Only the main worker (rank 0) evaluates the holdout, saves and
registers the version and writes the report. Models with dropout draw their masks per worker, so
with dropout the runs agree in distribution, not to the last bit.

The hashed id tables give sparse gradients, which gloo all-reduces as sparse tensors; NCCL has no sparse
all-reduce, so under NCCL the tables switch to dense gradients (``LazyAdam`` then updates every row, as
plain Adam would).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

# torchrun's contract: the variables it sets in every worker.
_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
TIMEOUT = timedelta(minutes=10)  # a collective that waits longer means a worker died


@dataclass(frozen=True)
class Workers:
    """This process's place in a multi-process training run."""

    rank: int
    local_rank: int
    world_size: int
    backend: str

    @property
    def main(self) -> bool:
        """The worker that evaluates, saves and reports."""
        return self.rank == 0

    def shard(self, rows: int) -> slice:
        """This worker's contiguous share of a global batch of ``rows`` rows (equal shares when ``rows``
        divides by the world size; the first workers take one more row otherwise)."""
        base, extra = divmod(rows, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The element-wise mean of ``value`` over all workers (every worker gets it)."""
        out = value.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size

    def broadcast(self, obj: Any) -> Any:
        """The main worker's ``obj`` on every worker (picklable objects: names, ids)."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` under DistributedDataParallel. No buffer changes in training (calibration is
        fitted after it), so buffers are synchronised once, when wrapping, not before every forward."""
        from torch.nn.parallel import DistributedDataParallel

        if self.backend == "nccl":
            for m in module.modules():
                if isinstance(m, nn.Embedding):
                    m.sparse = False
        ids = None
        if device.type == "cuda":
            ids = [device.index if device.index is not None else self.local_rank]
        return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)


def launched() -> bool:
    """Whether this process is one of several started by torchrun (or another launcher that sets the
    same variables)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[Workers | None]:
    """Join the launcher's process group for the duration of the block; ``None`` when not launched.

    ``device`` is the TrainConfig's: CUDA (``auto`` with a GPU, or ``cuda``) uses NCCL and pins each
    worker to the GPU of its local rank; otherwise gloo on CPU.
    """
    if not launched():
        yield None
        return
    missing = [v for v in (*_ENV, "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE > 1 but {', '.join(missing)} not set: start the workers with torchrun")
    rank, local_rank, world = (int(os.environ[v]) for v in _ENV)
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    joined_here = not dist.is_initialized()
    if joined_here:
        dist.init_process_group(backend, timeout=TIMEOUT)
    try:
        yield Workers(rank, local_rank, world, backend)
    finally:
        if joined_here:
            dist.destroy_process_group()
