"""The DreamShot trainer: a small loop with overridable hooks.

``load_models`` -> ``prepare_batch`` -> ``compute_loss`` -> (optimizer step) -> ``on_step_end``
-> ``save``. One micro-step is one story (stories differ in shots, references and prompt
segments, so they are not batched); ``train.gradient_accumulation_steps`` micro-steps make one
optimizer step. In a torchrun job every rank draws different stories from the same shuffled
order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..roles import RACLConfig, build_role_map
from ..atomic import atomic_save_safetensors, atomic_write_json, atomic_write_text
from .cache import CacheReader, Sample, build_sample, feasible_modes
from .checkpoint import CheckpointManager, resolve_resume, set_rng_state
from .config import ConfigError, TrainConfig, dump_toml
from .distributed import DistState, all_reduce_mean_, fsdp_mesh, init_distributed, mean_scalar
from .lora_io import dataset_hash, lora_metadata
from ..memory import GiB, peak_stats, reset_peak
from .objective import MODES, choose_mode, denoise_mask, flow_matching_loss, noise_frames, sample_sigmas

log = logging.getLogger("DreamShot")


@dataclass
class Batch:
    sample: Sample
    x0: torch.Tensor          # processed latent on the device
    noise: torch.Tensor
    sigma: torch.Tensor       # [1]
    x_t: torch.Tensor
    mask: torch.Tensor        # [1, 1, F, h, w]
    story: dict
    role_map: object | None


@dataclass
class TrainResult:
    start_step: int
    end_step: int
    losses: dict[int, float] = field(default_factory=dict)   # step -> mean loss (all ranks)
    lora_path: Path | None = None


def _lr_lambda(cfg: TrainConfig):
    o, total = cfg.optimizer, cfg.train.steps

    def f(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / (o.warmup_steps + 1)
        if o.scheduler in ("constant", "constant_with_warmup"):
            return 1.0
        progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
        if o.scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """optimizer.name: torch's AdamW / Adam / SGD, or bitsandbytes' 8-bit AdamW (imported only when chosen)."""
    o = cfg.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adamw8bit":
        try:
            import bitsandbytes
        except ImportError:
            raise ConfigError("optimizer.name = \"adamw8bit\" needs the bitsandbytes package (pip install "
                              "bitsandbytes), or choose \"adamw\"") from None
        # 8-bit states for tensors of 4096+ elements (every LoRA matrix of 1.3B/14B); smaller ones keep fp32
        return bitsandbytes.optim.AdamW8bit(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                            weight_decay=o.weight_decay)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


class Trainer:
    # config paths a run must be given (a subclass that makes its own model or data needs fewer)
    required_paths = ("model.dit", "data.cache_dir")

    def __init__(self, cfg: TrainConfig, dist_state: DistState | None = None):
        self.cfg = cfg.validate(need=self.required_paths)
        self.dist = dist_state or init_distributed(cfg.distributed.backend)
        self.out = cfg.output_dir
        self.story_model = None
        self.engine = None
        self.writer = None
        self.generator = torch.Generator().manual_seed(cfg.train.seed * 1009 + self.dist.rank)

    # -- hooks ------------------------------------------------------------------------------------
    def load_base_model(self, fsdp: bool):
        """The frozen DiT as a ComfyUI MODEL in ``model.dtype``, in host memory as comfy.sd loads it
        (the GPU check, dreamshot/bench/train_bench.py, builds a random one instead of reading a file)."""
        from ..comfy_bridge import training as bridge

        # FSDP: every process builds the model on meta and reads only its shards from the mapped file,
        # so the node's host memory holds the weights once (the page cache), not once per process
        return (bridge.load_dit_on_meta if fsdp else bridge.load_dit)(self.cfg.model.dit, self.cfg.model.dtype)

    def load_models(self) -> None:
        """ComfyUI headless, the DiT through comfy.sd, LoRA/deltas, the DreamShot story patches."""
        from ..comfy_bridge.headless import import_comfy

        import_comfy(self.cfg.model.comfyui_path or None, path_option="model.comfyui_path")
        from ..comfy_bridge import training as bridge

        c = self.cfg
        fsdp = c.distributed.strategy == "fsdp" and self.dist.enabled
        base = self.load_base_model(fsdp)
        if getattr(self, "data", None) is not None:   # the cache's latents must be this DiT's (16 or 48 channels)
            from ..comfy_bridge.geometry import check_geometry_fits_model

            check_geometry_fits_model(self.data.load(0, tensors=False).geometry, base, input_name="model.dit")
        n_blocks = len(base.model.diffusion_model.blocks)
        racl_layers = c.racl_layers()
        if racl_layers and max(racl_layers) >= n_blocks:
            raise ValueError(f"racl.layers {list(racl_layers)}: this model has blocks 0..{n_blocks - 1}")
        self.adapters = bridge.attach_trainable(
            base, rank=c.lora.rank, alpha=c.lora.alpha, targets=c.lora.targets, lora_blocks=c.lora_blocks(n_blocks),
            full_blocks=c.lora.full_finetune_blocks, full_modules=c.lora.full_finetune_modules, dropout=c.lora.dropout, seed=c.train.seed)
        if c.model.weight_dtype == "fp8_e4m3fn":
            saved = bridge.store_fp8(base, skip_blocks=c.lora.full_finetune_blocks)
            log.info("DreamShot: DiT block linears stored in float8_e4m3fn (%.2f GiB less), cast per layer by "
                     "ComfyUI's ops", saved / GiB)
        if c.train.blocks_to_swap > n_blocks:
            raise ValueError(f"train.blocks_to_swap = {c.train.blocks_to_swap}: this model has {n_blocks} blocks")
        racl = RACLConfig(lambda_racl=c.racl.lambda_racl, layers=racl_layers, kind=c.racl.kind, eps=c.racl.eps)
        self.story_model = bridge.StoryModel(base, self.adapters, c.train.gradient_checkpointing, racl,
                                             offload_activations=c.train.offload_activations,
                                             blocks_to_swap=c.train.blocks_to_swap,
                                             racl_budget_bytes=c.racl.budget_bytes)
        if c.distributed.strategy == "fsdp" and not self.dist.enabled:
            log.info("DreamShot: distributed.strategy = fsdp with one process: nothing to shard, running plainly")
        self.story_model.load(self.dist.device, fsdp_mesh(self.dist) if fsdp else None)
        self.base_model_name = bridge.describe_base_model(base, c.model.dit)
        self.shift = c.train.timestep_shift if c.train.timestep_shift != "model" else self.story_model.shift()
        self.named_params = self.adapters.named_trainable()
        self.params = [p for _, p in self.named_params]
        n = sum(p.numel() for p in self.params)
        log.info("DreamShot: %s, %d LoRA layers (rank %d) + %d full blocks = %.2fM trainable parameters, "
                 "timestep shift %.2f", self.base_model_name, len(self.adapters.loras), c.lora.rank,
                 len(c.lora.full_finetune_blocks), n / 1e6, self.shift)
        forward = _Forward(self.adapters, self.story_model.predict)
        if self.dist.enabled and not fsdp:
            from torch.nn.parallel import DistributedDataParallel

            self.engine = DistributedDataParallel(
                forward, device_ids=[self.dist.device.index] if self.dist.device.type == "cuda" else None)
        else:
            self.engine = forward
        self.manual_grad_sync = fsdp
        self.optimizer = make_optimizer(self.params, c)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(c))
        # fp16 compute underflows small gradients to zero: scale the loss (torch GradScaler), always
        compute = self.story_model.compute_dtype
        self.scaler = torch.amp.GradScaler(self.dist.device.type) if compute == torch.float16 else None
        log.info("DreamShot: computing in %s%s", str(compute).replace("torch.", ""),
                 " with loss scaling (GradScaler)" if self.scaler is not None else "")

    def load_data(self) -> None:
        c = self.cfg
        self.data = CacheReader(c.data.cache_dir, c)
        self.ratios = c.mode_ratios()
        self.feasible: list[list[str]] = []
        bad = []
        for i in range(len(self.data)):
            seq = self.data.load(i, tensors=False)
            modes = [m for m in feasible_modes(seq, c.data.max_shots, c.data.max_latent_frames,
                                               c.modes.s2s_keep_references) if self.ratios[m] > 0]
            self.feasible.append(modes)
            if not modes:
                bad.append(seq.id)
        if bad:
            raise ValueError(f"{len(bad)} sequence(s) fit no mode with a ratio > 0 ({', '.join(bad[:5])}): "
                             "reference_to_shot needs a character reference, shot_to_shot two shots; give "
                             "modes.t2s a ratio > 0 or fix the data (a video record trains only with "
                             "modes.t2v > 0 and at most data.max_latent_frames latent frames)")
        self.dataset_hash = dataset_hash(self.data.index)

    def sequence_index(self, micro_step: int) -> int:
        """The story of a rank's micro-step: one shuffled order per epoch, ranks interleaved."""
        n = len(self.data)
        g = micro_step * self.dist.world_size + self.dist.rank
        epoch, pos = divmod(g, n)
        if getattr(self, "_order", (None,))[0] != epoch:
            gen = torch.Generator().manual_seed(self.cfg.train.seed + 7919 * epoch)
            self._order = (epoch, torch.randperm(n, generator=gen).tolist())
        return self._order[1][pos]

    def prepare_batch(self, index: int, generator: torch.Generator | None = None, mode: str | None = None) -> Batch:
        c, gen = self.cfg, generator or self.generator
        seq = self.data.load(index)
        mode = mode or choose_mode(gen, self.ratios, self.feasible[index])
        sample = build_sample(seq, mode, gen, self.data.empty_text, c.data.max_shots, c.data.max_latent_frames,
                              c.data.text_min_length, c.data.caption_dropout, c.modes.s2s_keep_references)
        return self.batch_from_sample(sample, gen)

    def batch_from_sample(self, sample: Sample, generator: torch.Generator) -> Batch:
        """Noise, sigma, denoise mask, story options and role map of a packed story, on the device."""
        c, gen = self.cfg, generator
        dev = self.dist.device
        x0 = self.story_model.process_latent_in(sample.latent.to(dev))
        sigma = sample_sigmas(1, gen, c.train.timestep_sampling, self.shift, c.train.logit_mean, c.train.logit_std,
                              c.train.sigma_min, c.train.sigma_range()).to(dev)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        x_t = noise_frames(x0, noise, sigma, sample.noised)
        lay = sample.layout
        mask = denoise_mask(sample.noised, lay.latent_height, lay.latent_width).to(dev)
        from ..comfy_bridge.training import story_options_for

        story = story_options_for(lay, sample.frame_segments, sample.num_segments, sample.segment_length,
                                  sample.context if c.data.mask_text_padding else None)
        role_map = None
        if self.story_model.racl is not None and lay.num_refs and any(sample.shot_regions):
            role_map = build_role_map(lay, sample.ref_masks, sample.shot_regions).to(dev)
        return Batch(sample, x0, noise, sigma, x_t, mask, story, role_map)

    def compute_loss(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        forward = self.engine.module if hasattr(self.engine, "module") else self.engine
        forward.extras = (batch.story, batch.role_map)   # non-tensor inputs stay out of DDP's input handling
        denoised, racl = self.engine(batch.x_t, batch.sigma, batch.sample.context.to(self.dist.device), batch.mask)
        fm = flow_matching_loss(denoised, batch.x_t, batch.x0, batch.noise, batch.sigma, batch.sample.noised)
        loss = fm + racl
        return loss, {"fm": float(fm.detach()), "racl": float(racl.detach()) if torch.is_tensor(racl) else 0.0}

    def on_step_end(self, step: int, logs: dict) -> None:
        if not self.dist.is_main:
            return
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(logs, step=step)) + "\n")
        if self.writer is not None:
            for k, v in logs.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(f"train/{k}", v, step)

    def save(self, step: int, micro_step: int) -> Path:
        meta = lora_metadata(self.cfg, self.base_model_name, step, self.dataset_hash)
        return self.checkpoints.save(
            step, trainable=self.adapters.comfy_state_dict(torch.float32), lora_metadata=meta,
            optimizer_state=self.optimizer.state_dict(), param_names=[n for n, _ in self.named_params],
            scheduler_state=self.scheduler.state_dict(), data_generator=self.generator,
            trainer_state={"micro_step": micro_step, "base_model": self.base_model_name,
                           "dataset_hash": self.dataset_hash,
                           **({"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {})})

    def export_lora(self, step: int) -> Path:
        from ..comfy_bridge.training import DTYPES

        path = self.out / f"{self.cfg.train.lora_name}.safetensors"
        meta = lora_metadata(self.cfg, self.base_model_name, step, self.dataset_hash)
        atomic_save_safetensors(path, self.adapters.comfy_state_dict(DTYPES[self.cfg.lora.save_dtype]), meta)
        log.info("DreamShot: LoRA written to %s (load it with Load DreamShot Model)", path)
        return path

    # -- loop --------------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.story_model is not None:
            return
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.toml", dump_toml(self.cfg))
            atomic_write_json(self.out / "training_args.json", self.cfg.to_dict())
        self.dist.barrier()
        self.load_data()
        self.load_models()
        self.checkpoints = CheckpointManager(self.out, self.cfg.checkpoint.total_limit, self.dist.rank,
                                             self.dist.world_size, self.dist.barrier)
        if self.cfg.logging.tensorboard and self.dist.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RuntimeError("logging.tensorboard = true needs the tensorboard package "
                                   "(pip install tensorboard), or set it to false") from None
            self.writer = SummaryWriter(str(self.out / "tensorboard"))

    def resume(self) -> tuple[int, int]:
        """(step, micro_step) to start from; loads the checkpoint named by checkpoint.resume."""
        spec = self.cfg.checkpoint.resume
        if not spec:
            from .checkpoint import complete_checkpoints

            if self.dist.is_main and complete_checkpoints(self.out / "checkpoints"):
                log.warning("DreamShot: %s already holds checkpoints; starting again at step 0 replaces them "
                            "(use --resume latest to continue instead)", self.out / "checkpoints")
            return 0, 0
        path = resolve_resume(spec, self.out)
        if path is None:
            log.info("DreamShot: checkpoint.resume = latest but %s has no checkpoint yet: starting at step 0",
                     self.out / "checkpoints")
            return 0, 0
        names = [n for n, _ in self.named_params]
        ck = self.checkpoints.load(path, names)
        self.adapters.load_comfy_state_dict({k: v.to(self.dist.device) for k, v in ck["trainable"].items()})
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        if ck["rng"] is not None:
            set_rng_state(*ck["rng"], data_generator=self.generator)
        if self.scaler is not None and "grad_scaler" in ck["state"]:
            self.scaler.load_state_dict(ck["state"]["grad_scaler"])
        step, micro = int(ck["state"]["step"]), int(ck["state"]["micro_step"])
        if self.dist.is_main:
            _truncate_metrics(self.out / "metrics.jsonl", step)
        log.info("DreamShot: resumed from %s at step %d", path, step)
        return step, micro

    def train(self) -> TrainResult:
        self.setup()
        from ..comfy_bridge.compat import training_mode

        # Forward and backward (gradient checkpointing recomputes inside backward) with ComfyUI told it
        # is training, so it runs autograd-capable kernels.
        with training_mode():
            return self._train_loop()

    def _train_loop(self) -> TrainResult:
        step, micro = self.resume()
        c = self.cfg
        result = TrainResult(start_step=step, end_step=step)
        from tqdm import tqdm

        bar = tqdm(total=c.train.steps, initial=step, desc="DreamShot training", unit="step",
                   disable=not (self.dist.is_main and c.logging.progress))
        saved_at = step
        t0 = time.perf_counter()
        window = {"t": t0, "tokens": 0}   # tokens/s and peak memory since the last log line
        reset_peak(self.dist.device)
        while step < c.train.steps:
            micro, logs, tokens = self.train_step(micro)
            step += 1
            window["tokens"] += tokens
            result.losses[step] = logs["loss"]
            if step % c.logging.log_every == 0 or step == c.train.steps:
                logs.update(self.memory_logs(window))
                self.on_step_end(step, logs)
            bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")
            bar.update(1)
            if c.checkpoint.every and step % c.checkpoint.every == 0:
                self.save(step, micro)
                saved_at = step
        bar.close()
        if saved_at != step:
            self.save(step, micro)
        if self.dist.is_main:
            result.lora_path = self.export_lora(step)
        if self.writer is not None:
            self.writer.close()
        self.check_replicas()
        result.end_step = step
        dt = time.perf_counter() - t0
        if step > result.start_step:
            log.info("DreamShot: trained steps %d..%d in %.1fs (%.2f it/s)", result.start_step + 1, step, dt,
                     (step - result.start_step) / max(dt, 1e-9))
        return result

    def train_step(self, micro: int) -> tuple[int, dict, int]:
        """One optimizer step from micro-step ``micro`` (``gradient_accumulation_steps`` stories, forward
        and backward each), gradient clipping, the optimizer's and the scheduler's step: (the next
        micro-step, {"loss", "fm", "racl", "lr", "modes"[, "grad_norm"]} averaged over ranks, image tokens)."""
        c = self.cfg
        accum = c.train.gradient_accumulation_steps
        totals = {"loss": 0.0, "fm": 0.0, "racl": 0.0}
        modes = dict.fromkeys(MODES, 0)
        tokens = 0
        for a in range(accum):
            batch = self.prepare_batch(self.sequence_index(micro))
            micro += 1
            modes[batch.sample.mode] += 1
            tokens += batch.sample.layout.num_tokens
            sync = a == accum - 1 or not hasattr(self.engine, "no_sync")
            with contextlib.nullcontext() if sync else self.engine.no_sync():
                loss, parts = self.compute_loss(batch)
                scaled = loss / accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            totals["loss"] += float(loss.detach()) / accum
            totals["fm"] += parts["fm"] / accum
            totals["racl"] += parts["racl"] / accum
        if self.manual_grad_sync:
            all_reduce_mean_([p.grad for p in self.params if p.grad is not None], self.dist)
        grad_norm = None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if c.train.max_grad_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, c.train.max_grad_norm))
        lr = self.scheduler.get_last_lr()[0]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)   # skipped when the scaled gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        logs = {k: mean_scalar(v, self.dist) for k, v in totals.items()}
        logs.update(lr=lr, modes={k: v for k, v in modes.items() if v})
        if grad_norm is not None:
            logs["grad_norm"] = grad_norm
        return micro, logs, tokens

    def memory_logs(self, window: dict) -> dict:
        """Peak memory since the last log line (this rank's device) and image tokens per second."""
        now = time.perf_counter()
        out = {k: round(v, 3) for k, v in peak_stats(self.dist.device).items()}
        out["tokens_per_s"] = round(window["tokens"] / max(now - window["t"], 1e-9), 2)
        if self.scaler is not None:
            out["loss_scale"] = float(self.scaler.get_scale())
        log.info("DreamShot: %s", ", ".join(f"{k} {v}" for k, v in out.items()))
        window.update(t=now, tokens=0)
        reset_peak(self.dist.device)
        return out

    def check_replicas(self) -> None:
        """In a distributed run, every rank must hold the same trainable tensors (else DDP/FSDP broke)."""
        if not self.dist.enabled:
            return
        import torch.distributed as dist

        with torch.no_grad():
            mine = torch.stack([torch.stack([p.double().sum(), p.double().square().sum()]) for p in self.params]).flatten()
            mine = mine.to(self.dist.device)
            every = [torch.empty_like(mine) for _ in range(self.dist.world_size)]
            dist.all_gather(every, mine)
        if any(not torch.equal(every[0], e) for e in every[1:]):
            raise RuntimeError("DreamShot: the trainable weights differ between processes after training "
                               "(gradients were not synchronised)")
        log.info("DreamShot: all %d processes hold identical trainable weights", self.dist.world_size)

    @torch.no_grad()
    def evaluate(self, seed: int = 1234, modes: tuple[str, ...] | None = None) -> float:
        """Mean flow-matching loss over every cached story and mode, with fixed noise and sigmas."""
        losses = []
        for i in range(len(self.data)):
            for j, mode in enumerate(modes or self.feasible[i]):
                if mode not in self.feasible[i]:
                    continue
                gen = torch.Generator().manual_seed(seed + 1000 * i + j)
                batch = self.prepare_batch(i, gen, mode)
                denoised, _ = self.story_model.predict(batch.x_t, batch.sigma, batch.sample.context.to(self.dist.device),
                                                       batch.mask, batch.story, batch.role_map)
                losses.append(float(flow_matching_loss(denoised, batch.x_t, batch.x0, batch.noise, batch.sigma,
                                                       batch.sample.noised)))
        return sum(losses) / len(losses)


class _Forward(torch.nn.Module):
    """What DistributedDataParallel wraps: owns the trainable tensors, forwards to the story model."""

    def __init__(self, adapters: torch.nn.Module, predict):
        super().__init__()
        self.adapters = adapters
        self._predict = predict
        self.extras = ({}, None)   # (story options, role map) of the next call

    def forward(self, x_t, sigma, context, mask):
        story, role_map = self.extras
        return self._predict(x_t, sigma, context, mask, story, role_map)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the resumed step (they belong to the run that was interrupted)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def train(cfg: TrainConfig) -> TrainResult:
    return Trainer(cfg).train()
