"""The training configuration: one TOML file -> a validated ``TrainConfig`` dataclass tree.

Sections: [model], [data], [train], [modes], [racl], [lora], [optimizer], [checkpoint],
[distributed], [logging] (see the dataclasses below; README "Training (headless)" has a full
example). Unknown sections or keys are errors (a typo must not silently fall back to a
default). CLI overrides use the same dotted names: ``--set train.steps=100 --set lora.rank=16``;
values are read as TOML values (``100``, ``0.5``, ``true``, ``[0, 1]``, ``"text"``), a bare
word that is not TOML is taken as a string. Paths in the file are relative to the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_origin, get_type_hints

try:
    import tomllib
except ModuleNotFoundError:   # Python 3.10: the same parser as a package
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        raise ModuleNotFoundError("reading the TOML config needs Python 3.11+, or `pip install tomli` "
                                  "on Python 3.10") from None

DTYPES = ("bf16", "fp16", "fp32")
WEIGHT_DTYPES = ("default", "fp8_e4m3fn")
OPTIMIZERS = ("adamw", "adam", "sgd", "adamw8bit")
FITS = ("pad_white", "crop", "stretch", "error")
DEFAULT_LORA_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                        "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
LORA_TARGET_CHOICES = DEFAULT_LORA_TARGETS
# Top-level Wan DiT modules that lora.full_finetune_modules may train whole (a DiT trained from
# scratch needs them; adapting a pretrained Wan does not).
FULL_MODULE_CHOICES = ("patch_embedding", "text_embedding", "time_embedding", "time_projection", "head")


class ConfigError(ValueError):
    """A bad configuration value: names the key (section.key) and the fix."""


@dataclass
class ModelConfig:
    dit: str = ""                    # Wan2.1 T2V DiT .safetensors (ComfyUI diffusion_models file)
    vae: str = ""                    # Wan2.1 VAE .safetensors (cache step)
    text_encoder: str = ""           # UMT5-XXL .safetensors (cache step)
    text_encoder_config: dict = field(default_factory=dict)  # overrides the UMT5 config (tiny test models)
    dtype: str = "bf16"              # DiT weights / compute: bf16 | fp16 | fp32
    # "fp8_e4m3fn": the frozen linears of the DiT blocks are stored in float8 and cast per layer to the
    # compute dtype by ComfyUI's ops (as UNETLoader's weight_dtype does at inference); norms,
    # embeddings, modulation, head and fully fine-tuned blocks stay in ``dtype``. Halves the block weights.
    weight_dtype: str = "default"
    comfyui_path: str = ""           # else $COMFYUI_PATH, the ComfyUI containing this pack, ~/ComfyUI


@dataclass
class DataConfig:
    dataset: str = ""                # folder with manifest.jsonl
    cache_dir: str = ""              # where `cache` writes latents + text embeddings
    width: int = 640
    height: int = 352
    repeat: int = 4                  # T: pixel frames per shot (multiple of 4; 4 = one latent frame)
    shot_fit: str = "crop"
    reference_fit: str = "pad_white"
    max_shots: int = 6               # longer sequences are cut to their first max_shots shots
    max_latent_frames: int = 21      # references + shot frames per sample
    text_min_length: int = 512       # each prompt segment is zero-padded to this (UMT5 pads to 512)
    cache_dtype: str = "bf16"        # storage dtype of cached latents and text embeddings
    caption_dropout: float = 0.0     # chance to replace a shot caption by the empty prompt (for CFG)
    # Hide the zero padding rows from cross-attention. Wan attends to them (keep false for Wan2.1
    # LoRAs); for a DiT trained from scratch, like the shapes proof's, which otherwise put all its
    # cross-attention on the padding. Sample such a model with wan_patches.mask_text_padding.
    mask_text_padding: bool = False


@dataclass
class TrainSection:
    output_dir: str = "runs/dreamshot"
    steps: int = 2000                # optimizer steps
    seed: int = 42
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = True
    # The last N DiT blocks stay in CPU memory; ComfyUI's ops copy each weight to the GPU per use, in
    # forward and in backward's recomputation (needs gradient_checkpointing). 0 = every block on the GPU.
    blocks_to_swap: int = 0
    # Checkpointed block inputs (what gradient checkpointing keeps per block) wait in CPU memory for
    # backward instead of on the GPU (needs gradient_checkpointing).
    offload_activations: bool = False
    max_grad_norm: float = 1.0       # 0 = no clipping
    timestep_sampling: str = "uniform"   # uniform | logit_normal
    logit_mean: float = 0.0
    logit_std: float = 1.0
    timestep_shift: Any = "model"    # "model" (the checkpoint's sampling shift, 8.0 for Wan2.1 T2V) or a number
    sigma_min: float = 1e-3          # smallest sigma drawn
    # Wan2.2-T2V-A14B: train a LoRA for one expert, with sigmas drawn only from its range (the same
    # distribution restricted): "high_noise" = sigma >= expert_boundary, "low_noise" = below it; "" = all.
    expert: str = ""
    expert_boundary: float = 0.875   # Wan2.2 T2V's switch (the sampler's default)
    lora_name: str = "dreamshot_lora"    # final file: <output_dir>/<lora_name>.safetensors

    def sigma_range(self) -> tuple[float, float] | None:
        """The sigmas this run trains on: one Wan2.2-A14B expert's range, or None (all)."""
        if self.expert == "high_noise":
            return (self.expert_boundary, 1.0)
        if self.expert == "low_noise":
            return (0.0, self.expert_boundary)
        return None


@dataclass
class ModesConfig:
    r2s: float = 0.5                 # reference-to-shot: references clean, every shot noised
    t2s: float = 0.2                 # text-to-shot: no references, every shot noised
    s2s: float = 0.3                 # shot-to-shot: a random prefix of shots clean, the rest noised
    s2s_keep_references: bool = True
    t2v: float = 0.0                 # text-to-video: a video record's clip, all frames noised, one caption


@dataclass
class RACLSection:
    lambda_racl: float = 0.1         # 0 disables RACL
    layers: Any = "all"              # "all" or a list of block indices
    kind: str = "mass"               # mass | log
    eps: float = 1e-6
    # Bytes RACL's blockwise temporaries may take per attention layer (0 = the roles package default,
    # half of the layer's q). Smaller = more, smaller blocks; the loss is the same.
    budget_bytes: int = 0


@dataclass
class LoRASection:
    rank: int = 32
    alpha: float = 32.0
    targets: list = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    blocks: Any = "all"              # "all" or a list of block indices
    dropout: float = 0.0
    full_finetune_blocks: list = field(default_factory=list)   # blocks trained fully (saved as .diff)
    full_finetune_modules: list = field(default_factory=list)  # FULL_MODULE_CHOICES trained fully (.diff)
    save_dtype: str = "bf16"         # dtype of the final LoRA file (checkpoints keep fp32)


@dataclass
class OptimizerConfig:
    name: str = "adamw"              # adamw | adam | sgd | adamw8bit (needs `pip install bitsandbytes`)
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    scheduler: str = "constant"      # constant | constant_with_warmup | linear | cosine
    warmup_steps: int = 0


@dataclass
class CheckpointConfig:
    every: int = 500                 # steps between checkpoints (0 = only at the end)
    total_limit: int = 3             # checkpoints kept (0 = all)
    resume: str = ""                 # "" | "latest" | path to a checkpoint-<step> folder


@dataclass
class DistributedConfig:
    strategy: str = "ddp"            # ddp | fsdp (fsdp: shards the frozen DiT, for 14B; CUDA only)
    backend: str = ""                # "" = nccl on CUDA, gloo on CPU


@dataclass
class LoggingConfig:
    log_every: int = 10
    tensorboard: bool = False        # needs the `tensorboard` package
    progress: bool = True


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSection = field(default_factory=TrainSection)
    modes: ModesConfig = field(default_factory=ModesConfig)
    racl: RACLSection = field(default_factory=RACLSection)
    lora: LoRASection = field(default_factory=LoRASection)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    # -- derived ----------------------------------------------------------------------------------
    @property
    def output_dir(self) -> Path:
        return Path(self.train.output_dir)

    def mode_ratios(self) -> dict[str, float]:
        total = self.modes.r2s + self.modes.t2s + self.modes.s2s + self.modes.t2v
        return {"reference_to_shot": self.modes.r2s / total, "text_to_shot": self.modes.t2s / total,
                "shot_to_shot": self.modes.s2s / total, "text_to_video": self.modes.t2v / total}

    def racl_layers(self) -> tuple[int, ...] | None:
        return None if self.racl.layers == "all" else tuple(self.racl.layers)

    def lora_blocks(self, num_blocks: int) -> list[int]:
        blocks = range(num_blocks) if self.lora.blocks == "all" else self.lora.blocks
        return [i for i in blocks if i not in set(self.lora.full_finetune_blocks)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self, need: tuple[str, ...] = ()) -> "TrainConfig":
        """Check every value; ``need`` lists path keys that must be set (e.g. "model.dit")."""
        m, d, t, o = self.model, self.data, self.train, self.optimizer
        for key in need:
            section, name = key.split(".")
            if not getattr(getattr(self, section), name):
                raise ConfigError(f"{key} is not set: give it in the config file or with --set {key}=...")
        _choice("model.dtype", m.dtype, DTYPES)
        _choice("model.weight_dtype", m.weight_dtype, WEIGHT_DTYPES)
        if not isinstance(m.text_encoder_config, dict):
            raise ConfigError("model.text_encoder_config must be a table, e.g. { num_heads = 1 }")
        _choice("data.shot_fit", d.shot_fit, FITS)
        _choice("data.reference_fit", d.reference_fit, FITS)
        _choice("data.cache_dtype", d.cache_dtype, DTYPES)
        for key, v in (("data.width", d.width), ("data.height", d.height)):
            if v < 16 or v % 16:
                raise ConfigError(f"{key} = {v}: must be a positive multiple of 16 (VAE 8x, patch 2x)")
        if d.repeat < 4 or d.repeat % 4:
            raise ConfigError(f"data.repeat = {d.repeat}: must be a multiple of 4 (4 = one latent frame per shot)")
        _positive("data.max_shots", d.max_shots)
        if d.max_latent_frames < 2:
            raise ConfigError("data.max_latent_frames must be at least 2")
        _positive("data.text_min_length", d.text_min_length)
        _unit("data.caption_dropout", d.caption_dropout)
        _positive("train.steps", t.steps)
        _positive("train.gradient_accumulation_steps", t.gradient_accumulation_steps)
        if t.blocks_to_swap < 0:
            raise ConfigError(f"train.blocks_to_swap = {t.blocks_to_swap}: must be >= 0 (0 = no block swap)")
        for key, on in (("train.blocks_to_swap", t.blocks_to_swap > 0),
                        ("train.offload_activations", t.offload_activations)):
            if on and not t.gradient_checkpointing:
                raise ConfigError(f"{key} needs train.gradient_checkpointing = true (without it every block's "
                                  "activations, and the swapped weights' GPU copies, stay on the GPU until backward)")
        if t.blocks_to_swap and self.distributed.strategy == "fsdp":
            raise ConfigError("train.blocks_to_swap does not combine with distributed.strategy = \"fsdp\" (FSDP "
                              "already keeps 1/N of the weights per GPU): set one of them")
        if m.weight_dtype != "default" and self.distributed.strategy == "fsdp":
            raise ConfigError("model.weight_dtype = \"fp8_e4m3fn\" does not combine with distributed.strategy = "
                              "\"fsdp\" (FSDP shards weights of one dtype): use \"default\" or strategy = \"ddp\"")
        if t.max_grad_norm < 0:
            raise ConfigError("train.max_grad_norm must be >= 0 (0 = no clipping)")
        _choice("train.timestep_sampling", t.timestep_sampling, ("uniform", "logit_normal"))
        if t.logit_std <= 0:
            raise ConfigError("train.logit_std must be > 0")
        if t.timestep_shift != "model":
            if isinstance(t.timestep_shift, bool) or not isinstance(t.timestep_shift, (int, float)) \
                    or t.timestep_shift <= 0:
                raise ConfigError(f"train.timestep_shift = {t.timestep_shift!r}: use \"model\" or a number > 0")
            t.timestep_shift = float(t.timestep_shift)
        if not 0 < t.sigma_min < 1:
            raise ConfigError("train.sigma_min must be in (0, 1)")
        _choice("train.expert", t.expert, ("", "high_noise", "low_noise"))
        if not t.sigma_min < t.expert_boundary < 1:
            raise ConfigError(f"train.expert_boundary = {t.expert_boundary}: must lie between train.sigma_min and 1")
        if not t.lora_name or "/" in t.lora_name or "\\" in t.lora_name:
            raise ConfigError("train.lora_name must be a plain file name (no folders)")
        md = self.modes
        for key, v in (("modes.r2s", md.r2s), ("modes.t2s", md.t2s), ("modes.s2s", md.s2s), ("modes.t2v", md.t2v)):
            if v < 0 or not math.isfinite(v):
                raise ConfigError(f"{key} = {v}: ratios must be >= 0")
        if md.r2s + md.t2s + md.s2s + md.t2v <= 0:
            raise ConfigError("modes: at least one of r2s, t2s, s2s, t2v must be > 0")
        r = self.racl
        if r.lambda_racl < 0:
            raise ConfigError("racl.lambda_racl must be >= 0 (0 disables RACL)")
        _choice("racl.kind", r.kind, ("mass", "log"))
        r.layers = _blocks("racl.layers", r.layers)
        if r.budget_bytes < 0:
            raise ConfigError(f"racl.budget_bytes = {r.budget_bytes}: must be >= 0 (0 = the default budget)")
        lo = self.lora
        _positive("lora.rank", lo.rank)
        if lo.alpha <= 0:
            raise ConfigError("lora.alpha must be > 0 (the LoRA scale is alpha / rank)")
        bad = [x for x in lo.targets if x not in LORA_TARGET_CHOICES]
        if bad or not lo.targets:
            raise ConfigError(f"lora.targets {bad or '[]'}: choose from {list(LORA_TARGET_CHOICES)}")
        lo.blocks = _blocks("lora.blocks", lo.blocks)
        lo.full_finetune_blocks = list(_blocks("lora.full_finetune_blocks", lo.full_finetune_blocks) or [])
        bad = [x for x in lo.full_finetune_modules if x not in FULL_MODULE_CHOICES]
        if bad or len(set(lo.full_finetune_modules)) != len(lo.full_finetune_modules):
            raise ConfigError(f"lora.full_finetune_modules {bad or lo.full_finetune_modules}: choose each at most once "
                              f"from {list(FULL_MODULE_CHOICES)}")
        if not 0 <= lo.dropout < 1:
            raise ConfigError("lora.dropout must be in [0, 1)")
        _choice("lora.save_dtype", lo.save_dtype, DTYPES)
        _choice("optimizer.name", o.name, OPTIMIZERS)
        if o.lr <= 0:
            raise ConfigError("optimizer.lr must be > 0")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise ConfigError("optimizer.betas must be two numbers in [0, 1)")
        _choice("optimizer.scheduler", o.scheduler, ("constant", "constant_with_warmup", "linear", "cosine"))
        if o.warmup_steps < 0:
            raise ConfigError("optimizer.warmup_steps must be >= 0")
        c = self.checkpoint
        if c.every < 0 or c.total_limit < 0:
            raise ConfigError("checkpoint.every and checkpoint.total_limit must be >= 0")
        _choice("distributed.strategy", self.distributed.strategy, ("ddp", "fsdp"))
        _choice("distributed.backend", self.distributed.backend, ("", "nccl", "gloo"))
        _positive("logging.log_every", self.logging.log_every)
        return self


def _choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key} = {value!r}: choose one of {', '.join(map(repr, choices))}")


def _positive(key: str, value) -> None:
    if value < 1:
        raise ConfigError(f"{key} = {value}: must be >= 1")


def _unit(key: str, value) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"{key} = {value}: must be in [0, 1]")


def _blocks(key: str, value):
    if value == "all":
        return "all"
    if isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
        return sorted(set(value))
    raise ConfigError(f"{key} = {value!r}: use \"all\" or a list of block indices like [0, 1, 2]")


# -- reading ------------------------------------------------------------------------------------
_SECTIONS = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
_PATH_KEYS = ("model.dit", "model.vae", "model.text_encoder", "model.comfyui_path", "data.dataset",
              "data.cache_dir", "train.output_dir", "checkpoint.resume")
_ALIASES = {("racl", "lambda"): "lambda_racl"}


def _coerce(key: str, hint, value):
    """Check a TOML value against the dataclass field type (int accepted for float)."""
    if hint is Any:
        return value
    origin = get_origin(hint) or hint
    if origin is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} = {value!r}: expected a number")
        return float(value)
    if origin is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r}: expected true or false")
        return value
    if origin is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} = {value!r}: expected an integer")
        return value
    if origin is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {value!r}: expected a string")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} = {value!r}: expected a list")
        return list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} = {value!r}: expected a table")
        return dict(value)
    return value


def _apply(cfg: TrainConfig, section: str, key: str, value, origin: str) -> None:
    if section not in _SECTIONS:
        raise ConfigError(f"{origin}: unknown section [{section}] (known: {', '.join(_SECTIONS)})")
    key = _ALIASES.get((section, key), key)
    sec = getattr(cfg, section)
    hints = get_type_hints(type(sec))
    if key not in hints:
        raise ConfigError(f"{origin}: unknown key {section}.{key} (known: {', '.join(hints)})")
    setattr(sec, key, _coerce(f"{section}.{key}", hints[key], value))


def _resolve_paths(cfg: TrainConfig, base: Path, keys) -> None:
    for dotted in keys:
        section, name = dotted.split(".")
        value = getattr(getattr(cfg, section), name)
        if value and not (dotted == "checkpoint.resume" and value == "latest"):
            p = Path(value).expanduser()
            setattr(getattr(cfg, section), name, str(p if p.is_absolute() else (base / p)))


def parse_override(text: str) -> tuple[str, str, Any]:
    """ "train.steps=100" -> ("train", "steps", 100); the value is read as TOML, else a string."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {text!r}: write section.key=value, e.g. --set train.steps=100")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return parts[0], parts[1], value


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                cwd: Path | None = None) -> TrainConfig:
    """Read a TOML config (or start from the defaults), apply ``section.key=value`` overrides."""
    cfg = TrainConfig()
    file_keys: list[str] = []
    if path is not None:
        path = Path(path)
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        for section, table in raw.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: {section} must be a [section] table")
            for key, value in table.items():
                _apply(cfg, section, key, value, str(path))
                file_keys.append(f"{section}.{_ALIASES.get((section, key), key)}")
        _resolve_paths(cfg, path.resolve().parent, [k for k in _PATH_KEYS if k in file_keys])
    over_keys = []
    for text in overrides or []:
        section, key, value = parse_override(text)
        _apply(cfg, section, key, value, f"--set {text}")
        over_keys.append(f"{section}.{_ALIASES.get((section, key), key)}")
    _resolve_paths(cfg, (cwd or Path.cwd()), [k for k in _PATH_KEYS if k in over_keys])
    return cfg


# -- writing ------------------------------------------------------------------------------------
def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)   # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def toml_text(sections: dict[str, dict], comment: str = "") -> str:
    """``{section: {key: value}}`` as TOML: the package's one TOML writer (values: bool, int, float,
    str, list, dict)."""
    lines = [f"# {comment}"] if comment else []
    for section, values in sections.items():
        lines.append(f"\n[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def dump_toml(cfg: TrainConfig) -> str:
    """The resolved config as TOML (loads back with ``load_config``)."""
    return toml_text(cfg.to_dict(), "Resolved DreamShot training config (written by python -m dreamshot.train).")
