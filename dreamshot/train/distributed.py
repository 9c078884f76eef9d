"""torchrun-compatible process setup: RANK / WORLD_SIZE / LOCAL_RANK, NCCL on CUDA, gloo on CPU.

Strategies:
- ``ddp``: every rank holds the whole DiT; the trainable LoRA/delta tensors are wrapped in
  torch DistributedDataParallel (gradients averaged during backward).
- ``fsdp``: the frozen DiT is sharded block by block with FSDP2 (``fully_shard``), which is what
  lets Wan2.1 14B train on GPUs that cannot hold a full copy plus activations; the small
  trainable tensors stay replicated and their gradients are averaged with one all-reduce after
  backward. Every process builds the DiT on the meta device and reads only its shards from the
  memory-mapped checkpoint (``comfy_bridge.training.load_dit_on_meta`` / ``fill_sharded``), so a
  machine's host memory holds the weights once (its page cache), not once per process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger("DreamShot")


@dataclass
class DistState:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(backend: str = "") -> DistState:
    """This process's rank and device: cuda:LOCAL_RANK when there is CUDA, unless ComfyUI is already
    imported here to run on the CPU (--cpu), then the CPU like it."""
    from ..comfy_bridge.headless import imported_comfy_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    comfy_device = imported_comfy_device()
    cuda = torch.cuda.is_available() and not (comfy_device is not None and comfy_device.type == "cpu")
    if cuda:
        device = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if cuda else "gloo"),
                                device_id=device if cuda else None)
        log.info("DreamShot: process %d of %d on %s (%s)", rank, world, device, dist.get_backend())
    return DistState(rank, world, local, device)


def all_reduce_mean_(tensors: list[torch.Tensor], state: DistState) -> None:
    """Average tensors across ranks in place, as one flat all-reduce."""
    if not state.enabled or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    flat /= state.world_size
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def mean_scalar(value: float, state: DistState) -> float:
    if not state.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=state.device if state.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return float(t) / state.world_size


def fsdp_mesh(state: DistState):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(state.device.type, (state.world_size,))


def shutdown(state: DistState, wait_for_peers: bool = False) -> None:
    """Destroy the process group while the interpreter is whole: collect the objects that still hold it
    (DDP's reducer, FSDP's state) first, so gloo's worker threads never outlive Python's finalisation
    (which aborts the process: pytorch/pytorch#179291 describes it). After a finished run the ranks
    also meet once, so none closes its connections while another still reads from them; after an
    error they do not (a peer may never arrive: torchrun stops the others when this one exits)."""
    if state.enabled and dist.is_initialized():
        import gc

        gc.collect()
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()
