"""`llmkata train` in a world of processes: data parallel with the parallel chapter's DataParallel, or torch's
FSDP2 (`fully_shard`), under `torchrun` or `accelerate launch`.

    torchrun --nproc_per_node 2 -m llmkata.cli train --device cpu ...                     # gloo on the CPU
    accelerate launch --num_processes 2 --cpu -m llmkata.cli train --device cpu ...

Both launchers start the processes and say who is who in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT); `TrainingWorld.start` joins them (gloo on the CPU, NCCL on CUDA). Every rank draws the
same global batch from the same generator and trains on its rows (batch_size is the global batch, divided over
the ranks), so a run computes the same losses as one process does with that batch, to float tolerance; the
generator's state stays the same on every rank, and so do checkpoints. Rank 0 alone writes the run folder.

    ddp   every rank holds the whole model; DataParallel (chapter 13, the implementation's own) averages the
          gradients in buckets during backward.
    fsdp  torch's fully_shard on every transformer block and on the whole model: each rank holds 1/N of the
          weights, gradients and optimizer moments, and gathers a block's weights just before it runs. A
          checkpoint gathers the whole model and optimizer onto rank 0, in the one-process format, so any run
          (one process, ddp or fsdp) resumes it.

Outside a world (no WORLD_SIZE, or 1) nothing changes: one process, as before.
"""

from __future__ import annotations

import atexit
import datetime
import gc
import os

import torch
import torch.distributed as dist
from llmkata.run_config import ConfigError

MODES = ("ddp", "fsdp")
_joined = False  # whether this process is in a world that TrainingWorld.start joined


class TrainingWorld:
    """The processes a run trains in: this one's rank, their number, and how the model is spread over them."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0, mode: str = "ddp", started: bool = False):
        self.rank, self.size, self.local_rank, self.mode, self.started = rank, size, local_rank, mode, started

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run folder and says what happens."""
        return self.rank == 0

    @classmethod
    def start(cls, mode: str, device: torch.device, batch_size: int, resume: bool = False) -> TrainingWorld:
        """Join the world the launcher made (WORLD_SIZE > 1 in the environment); a world of one otherwise."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls(mode=mode)
        if mode not in MODES:
            raise ConfigError(f"parallel must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "fsdp" and resume:
            raise ConfigError("an fsdp run's checkpoint is in the one-process format: resume it with --parallel ddp "
                              "(or in one process)")
        if batch_size % size:
            raise ConfigError(f"batch_size ({batch_size}) is the global batch: it must split evenly over the "
                              f"{size} processes")
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=size,
                                    timeout=datetime.timedelta(minutes=30))
            atexit.register(_leave)
            global _joined
            _joined = True
        return cls(rank, size, local_rank, mode, started=True)

    def device(self, device: torch.device) -> torch.device:
        """A CUDA device per process (cuda:LOCAL_RANK); any other device as it is."""
        if self.size > 1 and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, impl, model):
        """The model as training runs it: DataParallel(model), or the model itself with its blocks sharded."""
        if self.size == 1:
            return model
        if self.mode == "ddp":
            return impl.parallel.DataParallel(model)
        from torch.distributed.fsdp import fully_shard

        for block in model.model.layers:
            fully_shard(block)
        fully_shard(model)
        return model

    def rows(self, batch: tuple) -> tuple:
        """This rank's rows of a global batch (x, y)."""
        if self.size == 1:
            return batch
        return tuple(t.chunk(self.size, dim=0)[self.rank] for t in batch)

    def mean(self, value: float) -> float:
        """The mean over the ranks of a number each has (the loss of its rows)."""
        if self.size == 1:
            return value
        total = torch.tensor(float(value), dtype=torch.float64)
        dist.all_reduce(total)
        return float(total) / self.size

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def whole(self, build, impl, model, optimizer, weight_decay: float):
        """(model, optimizer) in one process's form, for checkpoints and what follows training: the model itself
        with ddp; with fsdp, gathered from the shards into a new plain model and optimizer (every rank takes part;
        only rank 0 keeps the result, the others get (None, None))."""
        if self.size == 1 or self.mode == "ddp":
            return model, optimizer
        from torch.distributed.tensor import DTensor

        full = lambda t: t.full_tensor() if isinstance(t, DTensor) else t
        weights = {name: full(value.detach()) for name, value in model.state_dict().items()}
        states = [{key: full(value) if isinstance(value, torch.Tensor) else value
                   for key, value in optimizer.state.get(p, {}).items()}
                  for group in optimizer.param_groups for p in group["params"]]
        if not self.main:
            return None, None
        plain = build()
        plain.load_state_dict({name: value.cpu() for name, value in weights.items()})
        plain_optimizer = type(optimizer)(impl.train.parameter_groups(plain, weight_decay),
                                          **{k: v for k, v in optimizer.defaults.items()})
        for group, plain_group in zip(optimizer.param_groups, plain_optimizer.param_groups):
            plain_group.update({k: v for k, v in group.items() if k != "params"})
        plain_params = [p for group in plain_optimizer.param_groups for p in group["params"]]
        for p, state in zip(plain_params, states):
            if state:
                plain_optimizer.state[p] = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        return plain, plain_optimizer



class NoMetrics:
    """What ranks other than 0 log: nothing."""

    def write(self, **record) -> None:
        pass

    def close(self) -> None:
        pass


def leave_world() -> None:
    """End the world together: wait until every rank is here (the others wait for rank 0 to write the run folder),
    free what still holds the process group (a sharded model's device mesh), then destroy it. A rank that left
    alone while its peer was still connected could abort in gloo's teardown as the interpreter exited."""
    global _joined
    if _joined and dist.is_initialized():
        _joined = False
        dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def _leave() -> None:
    """At exit, after a failure: end this process's part without waiting for the others."""
    if dist.is_initialized():
        dist.destroy_process_group()
