"""Splitting the benchmark over processes / GPUs: ``--shard i/n``, or torchrun's RANK / WORLD_SIZE.

Story k of the run (in its story order: sorted by key, after ``--only``) goes to shard k mod n.
Every rank computes the same split from the same arguments, so no communication is needed and
each story's folder is written by exactly one rank. A story's files depend only on the story and
the settings (every pass is seeded, the model is cloned per pass, the context is the saved PNGs),
so a sharded run writes the same files as one process, and any split can resume any other's output.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping, Sequence, TypeVar

from ..errors import DreamShotInputError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1
    local_rank: int | None = None    # torchrun's LOCAL_RANK: this rank's CUDA device

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, items: Sequence[T]) -> list[T]:
        """This shard's items: every count-th one, starting at index (deterministic, disjoint)."""
        return list(items[self.index::self.count])


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), with 0 <= i < n."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if m is None:
        raise DreamShotInputError("shard", f"--shard {text!r} is not of the form i/n.",
                                  "give this process's shard index and the number of shards, 0-based: "
                                  "--shard 0/4, --shard 1/4, --shard 2/4 and --shard 3/4 for four processes.")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or index >= count:
        raise DreamShotInputError("shard", f"--shard {text}: the index must be below the number of shards "
                                  "(0-based).", f"use --shard 0/{max(count, 1)} ... --shard {max(count, 1) - 1}/"
                                  f"{max(count, 1)}, one process each.")
    return index, count


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise DreamShotInputError(name, f"the environment variable {name}={value!r} is not a count or index.",
                                  "launch with torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK, or unset it.")
    return number


def resolve_shard(option: str | None, environ: Mapping[str, str] | None = None) -> Shard:
    """This process's shard: ``--shard`` if given, else torchrun's RANK / WORLD_SIZE, else all stories."""
    environ = os.environ if environ is None else environ
    world, rank, local = (_env_int(environ, k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    if option is not None:
        if world is not None and world > 1:
            raise DreamShotInputError(
                "shard", f"--shard {option} was given to a torchrun rank (RANK={rank}, WORLD_SIZE={world}): "
                "every rank would run the same shard.",
                "drop --shard under torchrun (the ranks split the stories by RANK / WORLD_SIZE), or start one "
                "process per --shard without torchrun.")
        return Shard(*parse_shard(option), local_rank=local)
    if world is None:
        return Shard(local_rank=local)
    if world < 1 or rank is None or rank >= world:
        raise DreamShotInputError(
            "RANK", f"RANK={rank} with WORLD_SIZE={world}: the rank must be set and below the world size.",
            "launch with torchrun, which sets both, or unset WORLD_SIZE and use --shard i/n.")
    return Shard(rank, world, local_rank=local)


def use_rank_device(shard: Shard, cuda_available: bool, device_count: int) -> int | None:
    """torchrun ranks run on cuda:LOCAL_RANK (returned); None = ComfyUI's default device. Call
    ``torch.cuda.set_device`` with it before ComfyUI is imported: ComfyUI takes the current device."""
    if shard.local_rank is None or not cuda_available:
        return None
    if shard.local_rank >= device_count:
        raise DreamShotInputError(
            "LOCAL_RANK", f"LOCAL_RANK={shard.local_rank}, but only {device_count} CUDA device(s) are visible: "
            "each rank needs its own GPU.",
            f"launch torchrun with --nproc-per-node {device_count} or fewer (or make more GPUs visible with "
            "CUDA_VISIBLE_DEVICES).")
    return shard.local_rank
