"""Checkpoints: ``<output_dir>/checkpoints/checkpoint-<step>/``, written atomically, plus ``latest``.

A checkpoint folder holds::

    lora.safetensors        the trainable state (fp32) with ComfyUI-native LoRA keys + metadata:
                            loads in ComfyUI as it is
    optimizer.safetensors   optimizer state tensors ("state.<param index>.<name>")
    optimizer.json          param groups, non-tensor state, parameter names (order check)
    scheduler.json          LR scheduler state
    rng_rank<r>.safetensors per rank: torch CPU / CUDA generators and the trainer's data generator
    rng_rank<r>.json        per rank: Python's random state
    state.json              step, data position, world size (written last)

No pickle anywhere: tensors go to safetensors, the rest to JSON. The folder is written as
``.tmp-checkpoint-<step>`` and renamed into place only when complete (a POSIX rename is atomic),
then ``latest`` (a one-line file naming the folder) is replaced atomically. A process killed at
any moment leaves the previous checkpoint and ``latest`` intact; the half-written temporary
folder is removed by the next save or start. ``total_limit`` keeps the newest N checkpoints.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Callable

import torch

from ..atomic import atomic_save_safetensors, atomic_write_json, atomic_write_text, fsync_dir

log = logging.getLogger("DreamShot")

LATEST = "latest"
_NAME = re.compile(r"^checkpoint-(\d+)$")


# -- optimizer state <-> safetensors + JSON ------------------------------------------------------
def _flat_items(st: dict, prefix: str = ""):
    """(path, value) of a per-parameter state; nested dicts (bitsandbytes keeps its 8-bit state under
    ``__bnb_optimizer_quant_state__``) become "outer/inner" paths."""
    for k, v in st.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            yield from _flat_items(v, path)
        else:
            yield path, v


def _set_path(st: dict, path: str, value) -> None:
    *outer, last = path.split("/")
    for k in outer:
        st = st.setdefault(k, {})
    st[last] = value


def optimizer_to_files(state: dict, names: list[str]) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict] = {}
    for idx, st in state["state"].items():
        for k, v in _flat_items(st):
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                plain.setdefault(str(idx), {})[k] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "plain_state": plain, "param_names": names}


def optimizer_from_files(tensors: dict[str, torch.Tensor], info: dict, names: list[str]) -> dict:
    if info["param_names"] != names:
        raise ValueError("the checkpoint's optimizer was made for other trainable parameters "
                         "(lora/full_finetune settings changed since it was saved)")
    state: dict[int, dict] = {}
    for key, t in tensors.items():
        _, idx, name = key.split(".", 2)
        _set_path(state.setdefault(int(idx), {}), name, t)
    for idx, st in info["plain_state"].items():
        for name, v in st.items():
            _set_path(state.setdefault(int(idx), {}), name, v)
    groups = []
    for g in info["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# -- RNG ------------------------------------------------------------------------------------------
def rng_state(data_generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state(), "data": data_generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    return tensors, {"python": [version, list(internal), gauss]}


def set_rng_state(tensors: dict[str, torch.Tensor], info: dict, data_generator: torch.Generator) -> None:
    torch.set_rng_state(tensors["torch"])
    data_generator.set_state(tensors["data"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])
    version, internal, gauss = info["python"]
    random.setstate((version, tuple(internal), gauss))


# -- folders ---------------------------------------------------------------------------------------
def checkpoint_step(path: Path) -> int | None:
    m = _NAME.match(path.name)
    return int(m.group(1)) if m else None


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders (state.json present), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None and (p / "state.json").is_file()]
    return sorted(found, key=checkpoint_step)


def resolve_resume(spec: str, output_dir: Path) -> Path | None:
    """"latest" -> the folder ``latest`` names (else the newest complete one, else None); a path -> it."""
    root = output_dir / "checkpoints"
    if spec == "latest":
        pointer = root / LATEST
        if pointer.is_file():
            target = root / pointer.read_text(encoding="utf-8").strip()
            if (target / "state.json").is_file():
                return target
            log.warning("DreamShot: %s names %s, which is missing or incomplete; using the newest complete "
                        "checkpoint instead", pointer, target.name)
        done = complete_checkpoints(root)
        return done[-1] if done else None
    path = Path(spec)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"checkpoint.resume = {spec!r}: not a complete checkpoint folder (no state.json)")
    return path


def remove_stale_temporaries(root: Path) -> None:
    if root.is_dir():
        for p in root.glob(".tmp-checkpoint-*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in root.glob(".trash-checkpoint-*"):
            shutil.rmtree(p, ignore_errors=True)


class CheckpointManager:
    """Saves and loads checkpoints; in a distributed run every rank calls ``save`` (each writes its
    RNG state), rank 0 writes the rest and publishes the folder."""

    def __init__(self, output_dir: Path, total_limit: int, rank: int = 0, world_size: int = 1,
                 barrier: Callable[[], None] = lambda: None):
        self.root = Path(output_dir) / "checkpoints"
        self.total_limit = total_limit
        self.rank = rank
        self.world_size = world_size
        self.barrier = barrier
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.root)
        barrier()

    def save(self, step: int, *, trainable: dict[str, torch.Tensor], lora_metadata: dict[str, str],
             optimizer_state: dict, param_names: list[str], scheduler_state: dict, data_generator: torch.Generator,
             trainer_state: dict) -> Path:
        final = self.root / f"checkpoint-{step}"
        tmp = self.root / f".tmp-checkpoint-{step}"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        rt, rj = rng_state(data_generator)
        atomic_save_safetensors(tmp / f"rng_rank{self.rank}.safetensors", rt)
        atomic_write_json(tmp / f"rng_rank{self.rank}.json", rj)
        if self.rank == 0:
            atomic_save_safetensors(tmp / "lora.safetensors", trainable, lora_metadata)
            ot, oj = optimizer_to_files(optimizer_state, param_names)
            atomic_save_safetensors(tmp / "optimizer.safetensors", ot)
            atomic_write_json(tmp / "optimizer.json", oj)
            atomic_write_json(tmp / "scheduler.json", scheduler_state)
        self.barrier()
        if self.rank == 0:
            atomic_write_json(tmp / "state.json", dict(trainer_state, step=step, world_size=self.world_size))
            if final.exists():   # the same step saved again after a resume: replace it
                trash = self.root / f".trash-checkpoint-{step}"
                shutil.rmtree(trash, ignore_errors=True)
                final.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            tmp.rename(final)
            fsync_dir(self.root)
            atomic_write_text(self.root / LATEST, final.name + "\n")
            self._prune()
            log.info("DreamShot: saved %s", final)
        self.barrier()
        return final

    def _prune(self) -> None:
        if self.total_limit <= 0:
            return
        done = complete_checkpoints(self.root)
        for old in done[: max(0, len(done) - self.total_limit)]:
            shutil.rmtree(old, ignore_errors=True)
            log.info("DreamShot: removed old checkpoint %s (checkpoint.total_limit = %d)", old.name, self.total_limit)

    def load(self, path: Path, param_names: list[str]) -> dict:
        """Everything in a checkpoint folder, for this rank."""
        import safetensors.torch

        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        out = {"path": path, "state": state,
               "trainable": safetensors.torch.load_file(str(path / "lora.safetensors")),
               "optimizer": optimizer_from_files(safetensors.torch.load_file(str(path / "optimizer.safetensors")),
                                                 json.loads((path / "optimizer.json").read_text(encoding="utf-8")),
                                                 param_names),
               "scheduler": json.loads((path / "scheduler.json").read_text(encoding="utf-8")), "rng": None}
        rng_file = path / f"rng_rank{self.rank}.safetensors"
        if state.get("world_size") == self.world_size and rng_file.is_file():
            out["rng"] = (safetensors.torch.load_file(str(rng_file)),
                          json.loads((path / f"rng_rank{self.rank}.json").read_text(encoding="utf-8")))
        else:
            log.warning("DreamShot: %s was saved with %s process(es), this run has %d: random streams restart "
                        "from the seed (training continues, but not bit-identically)", path.name,
                        state.get("world_size"), self.world_size)
        return out
