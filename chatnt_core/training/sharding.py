"""Fully sharded training (FSDP2, ``torch.distributed.fsdp.fully_shard``) of a ChatNT model.

Why the trainer shards the model itself rather than leaving it to Accelerate: Accelerate
only enables its FSDP plugin on GPUs (on CPU it silently falls back to DDP), so the path
users take on a cluster could never be run on a CPU machine. ``fully_shard`` runs on CPU
with gloo, so one code path is tested here and used everywhere: the trainer shards when
Accelerate's own switch ``ACCELERATE_USE_FSDP=true`` is set (``accelerate launch
--config_file registry/training/accelerate-fsdp.yaml`` sets it; with ``torchrun`` set it
yourself), and Accelerate then only supplies the process group and device. Accelerate's
FSDP2 preparation leaves an already sharded model as it is.

What is sharded: every element of every ``nn.ModuleList`` (the decoder's layers, the
encoders' and projections' layers) is its own unit, all-gathered just before it runs and
freed after; the rest (embeddings, output layer, norms, the projections' linear maps)
is the root unit. Frozen and trainable parameters mix freely inside a unit (FSDP2 keeps
``requires_grad`` per parameter): only trainable ones get gradients and Adam states, and
those are sharded too, which is the point for a 7B decoder with LoRA.

Checkpoints stay in the single-process format: trainable weights are gathered into one
``model.safetensors`` on rank 0; each rank writes its own shard of the optimizer state
(``optimizer-rank{r}.*``, local tensors), which ``load_optimizer_state`` turns back into
shards of the same layout, so a resume needs the same number of processes.

Limitation: every process must run every unit in every micro-batch (FSDP's all-gathers
are collective). That holds for one-modality assemblies such as the paper's; an
assembly with several encoders needs each micro-batch to reach each encoder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

FSDP_ENV = "ACCELERATE_USE_FSDP"


def fsdp_requested() -> bool:
    """True when the launch asked for FSDP through Accelerate's switch."""
    return os.environ.get(FSDP_ENV, "false").strip().lower() in ("1", "true", "yes")


def _units(model: nn.Module) -> list[nn.Module]:
    """Modules that get their own all-gather: elements of ``nn.ModuleList``s holding
    parameters, innermost first (``fully_shard`` needs children before their parents)."""
    found: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            found.extend(m for m in module if next(m.parameters(), None) is not None)
    return list(reversed(found))


def shard_model(model: nn.Module, device: torch.device) -> int:
    """Shard ``model`` in place over the default process group; returns the unit count.

    Call it after the weights are final (loaded from a checkpoint, warm-ups done) and
    before the optimizer is built: the optimizer must hold the sharded parameters.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    world = torch.distributed.get_world_size()
    mesh = init_device_mesh(device.type, (world,))
    model.to(device)
    units = _units(model)
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return len(units) + 1


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """Reduce-scatter gradients after this backward pass (the last micro-batch) or not."""
    model.set_requires_gradient_sync(sync)  # type: ignore[operator]


def _full(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def gathered_state(model: nn.Module, names: Iterable[str], main: bool) -> dict[str, torch.Tensor]:
    """The named entries of the state dict as full tensors, on the main process only.

    Only the named (trainable) entries are gathered, so a frozen 7B decoder is never
    assembled in one process. Every process must call this (the gathers are collective).
    """
    state = model.state_dict()
    gathered = {}
    for name in sorted(names):
        if name in state:
            full = _full(state[name])
            if main:
                gathered[name] = full.detach().cpu().contiguous().clone()
    return gathered


def clip_grad_norm(parameters: Sequence[torch.Tensor], max_norm: float) -> float:
    """Clip the global gradient norm of sharded (DTensor) gradients; returns the norm
    before clipping, the same number one process computes on full gradients."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    norm = _full(torch.nn.utils.get_total_norm(grads, 2.0))
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
    return float(norm)


def local_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """This process's shard of an optimizer ``state_dict``: DTensors become their local
    tensors, which safetensors can store."""
    from torch.distributed.tensor import DTensor

    per_param = {
        key: {
            name: value.to_local() if isinstance(value, DTensor) else value
            for name, value in entry.items()
        }
        for key, entry in state["state"].items()
    }
    return {**state, "state": per_param}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a state saved by ``local_optimizer_state`` into an optimizer over sharded
    parameters: each local tensor shaped like its parameter's shard becomes a DTensor
    with that parameter's mesh and placements again."""
    from torch.distributed.tensor import DTensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    restored: dict[Any, Any] = {}
    for key, entry in state["state"].items():
        param = params[int(key)]
        values = dict(entry)
        if isinstance(param, DTensor):
            local = param.to_local()
            for name, value in entry.items():
                if isinstance(value, torch.Tensor) and value.shape == local.shape:
                    values[name] = DTensor.from_local(
                        value.to(local.device),
                        param.device_mesh,
                        param.placements,
                        shape=param.shape,
                        stride=param.stride(),
                    )
        restored[key] = values
    optimizer.load_state_dict({**state, "state": restored})


DEEPSPEED_ENV = "ACCELERATE_USE_DEEPSPEED"


def check_launch() -> None:
    """Refuse a launch that would not do what its config says.

    Accelerate ignores ``ACCELERATE_USE_DEEPSPEED`` on a machine without GPUs and runs
    plain DDP instead, so a DeepSpeed config would "work" while sharding nothing. The
    shipped ZeRO-2 config is GPU-only (docs/training.md says why); on CPUs, FSDP is the
    sharded strategy that runs.
    """
    from chatnt_core.errors import ChatNTError

    wants_deepspeed = os.environ.get(DEEPSPEED_ENV, "false").strip().lower() == "true"
    if wants_deepspeed and not torch.cuda.is_available():
        raise ChatNTError(
            "the DeepSpeed config (accelerate-deepspeed-zero2.yaml) is GPU-only and no GPU "
            "is visible: on CPUs use FSDP (accelerate-fsdp.yaml, or ACCELERATE_USE_FSDP=true "
            "with torchrun) or plain DDP"
        )
    if wants_deepspeed and fsdp_requested():
        raise ChatNTError("both DeepSpeed and FSDP were requested: launch with one config")


def configure_deepspeed(accelerator: Any, micro_batch_size: int) -> None:
    """Give DeepSpeed the batch sizes it insists on. The trainer feeds no dataloader to
    ``prepare`` and accumulates over a token budget itself, so Accelerate cannot fill
    DeepSpeed's ``auto`` sizes and ``prepare`` fails without these (found by running the
    shipped ZeRO-2 config with DeepSpeed's CPU accelerator, see docs/training.md)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    config = plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    config["gradient_accumulation_steps"] = 1
    config["train_batch_size"] = micro_batch_size * accelerator.num_processes
