"""Data parallelism across processes with PyTorch's own machinery: ``torchrun`` starts the processes and tells
each its rank through the environment; ``DistributedDataParallel`` averages gradients (gloo on CPU, NCCL on CUDA).

The recipes stay single-process programs with four extra ideas, all here:

- every process draws the same global batch of an optimizer step (seeded by seed and epoch only), cuts it into
  micro-batches, one per process and accumulation step, and keeps its own (:func:`my_share`), so which examples
  make up step k does not depend on the number of processes or on gradient accumulation;
- the mean loss of each micro-batch is scaled by its share of the items the step's loss averages over (examples,
  labelled or masked tokens), so that DDP's average over processes equals the one-process mean over the global
  batch, and only the last micro-batch of a step all-reduces (:func:`gradient_sync`, DDP's ``no_sync``);
- only the main process (rank 0) evaluates, logs and writes files (:attr:`Processes.is_main`);
- figures that each process saw part of (losses, token counts) are summed across processes (:func:`sum_across`).

Pretraining may shard the model instead of copying it (``strategy: fsdp``, :func:`wrap_model`); then every process
takes part in evaluation and in gathering the whole weights for a checkpoint (:func:`whole_model`).

Without torchrun (no ``WORLD_SIZE`` in the environment) all of this reduces to the plain single-process loop.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from bertforge.errors import BertforgeError
from bertforge.model import BertLayer
from bertforge.runtime import pick_device

log = logging.getLogger("bertforge")

T = TypeVar("T")

STRATEGIES = ("ddp", "fsdp")

# How long a process waits in a collective for the others before it gives up. torchrun stops the survivors as
# soon as one process dies; this bounds the wait where nothing watches the processes. The main process
# evaluates and saves while the others wait at the next step, so this must exceed the longest evaluation.
DEFAULT_TIMEOUT_MINUTES = 30.0


@dataclass(frozen=True)
class Processes:
    """Where this process stands among the processes of one run."""

    rank: int = 0  # 0 .. world_size-1; rank 0 is the main process
    world_size: int = 1  # processes in the run (all machines)
    local_rank: int = 0  # index on this machine: picks the GPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def join_processes(device: str) -> tuple[Processes, torch.device]:
    """Join the run that torchrun described in the environment (or stand alone); return this process's device.

    On CUDA each process takes the GPU of its local rank and the NCCL backend; on the CPU, gloo. Processes other
    than the main one log warnings only, so the console shows one copy of the run's messages.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    picked = pick_device(device)
    if world_size == 1:
        return Processes(), picked
    try:
        processes = Processes(int(os.environ["RANK"]), world_size, int(os.environ["LOCAL_RANK"]))
    except (KeyError, ValueError):
        raise BertforgeError(
            f"WORLD_SIZE={world_size} is set but RANK or LOCAL_RANK is missing or not a number; start several "
            "processes with torchrun (`torchrun --nproc-per-node N -m bertforge ...`), which sets all three"
        ) from None
    if picked.type == "cuda":
        picked = torch.device("cuda", processes.local_rank)
        torch.cuda.set_device(picked)
    if not dist.is_initialized():
        minutes = float(os.environ.get("BERTFORGE_DIST_TIMEOUT_MINUTES", DEFAULT_TIMEOUT_MINUTES))
        dist.init_process_group(
            "nccl" if picked.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=minutes)
        )
    if not processes.is_main:
        log.setLevel(logging.WARNING)
    return processes, picked


def leave_processes() -> None:
    """Wait for every process to finish, then close the process group (a no-op when running alone)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap_model(model: nn.Module, processes: Processes, device: torch.device, strategy: str = "ddp") -> nn.Module:
    """``model`` made ready for several processes; the model itself when running alone.

    "ddp": DistributedDataParallel, a whole copy in each process (parameters start equal: DDP broadcasts rank 0's).
    "fsdp": PyTorch's fully sharded data parallelism (FSDP2, ``fully_shard``) on each encoder layer and on the
    whole: each process keeps a 1/N share of parameters, gradients and optimizer state and gathers a layer's
    parameters only while it runs, for models that do not fit one device. Build the optimizer after this call.
    """
    if not processes.distributed:
        return model
    if strategy not in STRATEGIES:
        raise BertforgeError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if strategy == "fsdp":
        with torch.no_grad():  # start from rank 0's weights, as DDP does: each process initialised its own
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor, src=0)
        fully_shard = _fully_shard()
        for module in model.modules():
            if isinstance(module, BertLayer):
                fully_shard(module)
        fully_shard(model)
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _fully_shard() -> Any:
    try:
        from torch.distributed.fsdp import fully_shard  # torch >= 2.6
    except ImportError:  # torch 2.4 and 2.5 ship it under its first name
        from torch.distributed._composable.fsdp import fully_shard
    return fully_shard


def is_sharded(model: nn.Module) -> bool:
    """True for a model that :func:`wrap_model` sharded with FSDP."""
    return hasattr(model, "set_requires_gradient_sync")


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def whole_model(model: nn.Module, processes: Processes, architecture: type[nn.Module]) -> nn.Module | None:
    """The unsharded model in the main process, for saving; None in the others.

    Under FSDP every process must call this (the parameters are gathered from all of them) and the main process
    gets a plain ``architecture`` holding the full weights, which saves to the same Hugging Face-layout folder
    as a single-process run.
    """
    if not is_sharded(model):
        return unwrap(model) if processes.is_main else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not processes.is_main:
        return None
    whole = architecture(model.config)
    whole.load_state_dict(state)
    return whole


def optimizer_state_by_name(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state keyed by parameter names rather than positions, so that a checkpoint resumes
    under any strategy and number of processes. Every process must call this (FSDP gathers the shares)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def my_share(
    micro_batches: Sequence[T], counts: Sequence[Sequence[float]], processes: Processes
) -> list[tuple[T, tuple[float, ...]]]:
    """This process's micro-batches of one optimizer step, each with the factors its loss terms are multiplied by.

    ``micro_batches`` are the whole step's, the same in every process. ``counts[j][k]`` is how many items loss term
    ``k`` of micro-batch ``j`` is a mean over: examples for a classification or NSP loss, labelled tokens for NER,
    masked tokens for MLM, or the summed class weights of a weighted cross-entropy. A single process computing the
    mean over the global batch divides by the sum over all micro-batches, so micro-batch ``j``'s term gets the
    factor ``world_size * counts[j][k] / sum_j counts[j][k]``: its share of the global mean, times ``world_size``
    because DDP averages the processes' gradients. Micro-batches of different sizes (the last step of an epoch)
    and different token counts therefore add up to exactly the one-process loss.

    Micro-batch ``j`` goes to process ``j % world_size``. At the end of an epoch a step may have fewer
    micro-batches than processes; a process left without one runs the first with factors 0, because every
    process must take part in the gradient all-reduce.
    """
    table = np.asarray(counts, dtype=np.float64).reshape(len(micro_batches), -1)  # (micro-batches, terms)
    totals = table.sum(axis=0)  # (terms,)
    # A term with nothing to average over in the whole step (no labelled token at all) contributes nothing.
    factors = np.divide(processes.world_size * table, totals, out=np.zeros_like(table), where=totals > 0)
    mine = range(processes.rank, len(micro_batches), processes.world_size)
    if not mine:
        return [(micro_batches[0], (0.0,) * table.shape[1])]
    return [(micro_batches[j], tuple(float(f) for f in factors[j])) for j in mine]


def gradient_sync(model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` (FSDP: no reduce-scatter) for every micro-batch but the last of a step: gradients
    accumulate locally and are averaged across processes once, in the last backward pass."""
    if is_sharded(model):
        model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()
    if last or not isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def sum_across(values: list[float], processes: Processes) -> list[float]:
    """Element-wise sum over processes of figures each process saw part of (losses, token counts)."""
    if not processes.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_objects(value: Any, processes: Processes) -> list[Any]:
    """``value`` of every process, in rank order (a one-element list when running alone)."""
    if not processes.distributed:
        return [value]
    gathered: list[Any] = [None] * processes.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def share_from_main(value: T, processes: Processes) -> T:
    """The main process's ``value`` in every process: decisions only the main process can make (it evaluates)."""
    if not processes.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def restore_rank_rng(state: dict[str, Any], processes: Processes, seed: int, step: int) -> None:
    """Give this process the random state it had at the checkpoint (dropout masks continue as if never stopped).

    A checkpoint holds every process's state (``rank_torch_rng``). A run resumed with more processes than it was
    saved with seeds the new ones from (seed, rank, step), so that no two processes draw the same masks.
    """
    saved = state.pop("rank_torch_rng", None) or []
    if processes.rank < len(saved):
        torch.set_rng_state(saved[processes.rank])
    else:
        torch.manual_seed(hash((seed, processes.rank, step)) % 2**63)


def micro_batches_per_step(batch_size: int, accumulation: int, processes: Processes) -> int:
    """How many micro-batches make one optimizer step of ``batch_size`` examples (the global batch)."""
    if accumulation < 1:
        raise BertforgeError(f"gradient_accumulation_steps {accumulation} must be at least 1")
    parts = accumulation * processes.world_size
    if batch_size % parts:
        raise BertforgeError(
            f"batch_size {batch_size} (the global batch) does not split into {accumulation} accumulation step(s) "
            f"× {processes.world_size} processes; pick a batch_size divisible by {parts}"
        )
    return parts


def lost_contact_message(error: BaseException) -> str | None:
    """What to tell the user when a collective failed because another process of the run is gone; None when
    ``error`` is something else. (gloo raises a bare RuntimeError, NCCL a DistBackendError.)"""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    text = str(error)
    if not (isinstance(error, getattr(dist, "DistError", ())) or "gloo" in text or "NCCL" in text):
        return None
    return (
        f"rank {dist.get_rank()} lost contact with another process of this run ({text.splitlines()[0][:200]}). "
        "Another process has stopped: its own messages, or torchrun's summary, name the cause. Fix it, then "
        "run the same command with --resume: training continues from the last checkpoint, with any number of "
        "processes"
    )
