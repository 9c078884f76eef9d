"""``python -m dreamshot.train estimate``: the expected peak GPU memory of a training config, with the
arithmetic laid out line by line.

The peak of a step is reached in backward, in the first block backward visits (with gradient
checkpointing, every block's backward looks alike), and is the sum of

- the DiT weights kept on the device (storage dtype; fp8 block linears 1 byte; swapped blocks none;
  with FSDP 1/N of them plus the two blocks FSDP gathers at a time),
- the trainable tensors: fp32 LoRA / delta parameters, their fp32 gradients and the optimizer states,
- what forward kept for backward: each block's input (L x dim, unless offloaded to the host; every
  block's saved activations without checkpointing), the embeddings and head,
- one block's recomputed activations and its backward temporaries,
- that block's weights cast to the compute dtype (fp8 storage, swapped blocks, or storage != compute),
- RACL's temporaries in that block (its byte budget plus full-size dq and dk).

The activation coefficients (bytes per token, in units of dim and ffn_dim) were measured with
``dreamshot.memory.TensorLedger`` on ComfyUI's own Wan block (tests/test_train_memory.py checks
the estimate against such a measurement). Byte counts are tensor bytes: the CUDA caching allocator
adds fragmentation and its own reserve on top (``peak_reserved_gib`` in the training log), typically
5-15 %.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..safetensors_header import read_header

GiB = 1024 ** 3
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

# Bytes per image token a Wan block keeps for backward, in units of (dim x compute bytes) and
# (ffn_dim x compute bytes): norms, modulated inputs, q/k/v, attention output, gates, FFN hidden and
# GELU output. Measured at dim 1536 / ffn 8960 (see module docstring): 19.4 dim + 2 ffn.
SAVED_PER_TOKEN_DIM = 19.4
SAVED_PER_TOKEN_FFN = 2.0
# Backward's own temporaries on top of them: about one FFN-wide gradient per token.
BACKWARD_PER_TOKEN_FFN = 1.0
# Kept outside the blocks per image token (patch embedding output, head), in units of dim.
OUTSIDE_PER_TOKEN_DIM = 2.2
# Per text token: the embedded context (all blocks) and one block's cross-attention k / v.
TEXT_PER_TOKEN_DIM = 6.0
# dreamshot.roles' default RACL budget: half of the bytes of the layer's q.
RACL_DEFAULT_BUDGET_FRACTION = 0.5


@dataclass(frozen=True)
class WanDims:
    dim: int
    ffn_dim: int
    num_blocks: int
    text_dim: int = 4096
    in_dim: int = 16
    out_dim: int = 16
    freq_dim: int = 256

    @property
    def heads(self) -> int:
        return self.dim // 128

    @property
    def name(self) -> str:
        return {(1536, 30): "Wan2.1 1.3B", (5120, 40): "Wan2.1 14B", (3072, 30): "Wan2.2-TI2V-5B"}.get(
            (self.dim, self.num_blocks), f"Wan dim {self.dim}, {self.num_blocks} blocks")

    @property
    def token_px(self) -> int:
        """Pixels per image token each way: 16 (Wan2.1's 8x VAE), 32 for a 48-channel DiT, whose latent is
        the Wan2.2 VAE's (16x; ComfyUI's WAN22_T2V and latent_formats.Wan22), then the 2x2 patchify."""
        return 32 if self.out_dim == 48 else 16

    # parameter counts
    def block_linear_weights(self) -> int:
        d, f = self.dim, self.ffn_dim
        return 8 * d * d + 2 * d * f

    def block_other(self) -> int:
        """Biases, norms (q/k norms, norm3 with bias) and the modulation vector of one block."""
        d, f = self.dim, self.ffn_dim
        return (8 * d + f + d) + 4 * d + 2 * d + 6 * d

    def outside_params(self) -> tuple[int, int]:
        """(fp32 patch embedding, the rest) of the parameters outside the blocks."""
        d = self.dim
        patch = self.in_dim * d * 4 + d
        text = self.text_dim * d + d + d * d + d
        time = self.freq_dim * d + d + d * d + d + 6 * d * d + 6 * d
        head = d * self.out_dim * 4 + self.out_dim * 4 + 2 * d
        return patch, text + time + head


WAN21 = {"1.3B": WanDims(1536, 8960, 30), "14B": WanDims(5120, 13824, 40)}


def dims_from_file(path: str | Path) -> WanDims:
    """Model sizes from a Wan .safetensors header (nothing else is read)."""
    shapes = {key.removeprefix("model.diffusion_model.").removeprefix("diffusion_model."): info["shape"]
              for key, info in read_header(path).items()}
    try:
        dim, in_dim = shapes["patch_embedding.weight"][:2]
        ffn = shapes["blocks.0.ffn.0.weight"][0]
        text_dim = shapes["text_embedding.0.weight"][1]
    except KeyError as e:
        raise ValueError(f"{path}: not a Wan DiT file (no {e.args[0]})") from None
    blocks = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("blocks."))
    out_dim = shapes["head.head.weight"][0] // 4
    return WanDims(dim, ffn, blocks, text_dim, in_dim, out_dim)


@dataclass
class Line:
    what: str
    bytes: float
    how: str


@dataclass
class Estimate:
    dims: WanDims
    tokens: int
    text_tokens: int
    lines: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> float:
        return sum(x.bytes for x in self.lines)

    def part(self, prefix: str) -> float:
        return sum(x.bytes for x in self.lines if x.what.startswith(prefix))

    def format(self) -> str:
        rows = [f"{self.dims.name}: {self.tokens} image tokens, {self.text_tokens} text tokens per sample"]
        width = max(len(x.what) for x in self.lines)
        for x in self.lines:
            rows.append(f"  {x.what:<{width}}  {x.bytes / GiB:8.2f} GiB   {x.how}")
        rows.append(f"  {'expected peak (tensor bytes)':<{width}}  {self.peak / GiB:8.2f} GiB")
        rows += [f"  note: {n}" for n in self.notes]
        return "\n".join(rows)


def _gib(x: float) -> str:
    return f"{x / GiB:.2f} GiB"


def estimate(cfg, dims: WanDims, tokens: int, text_tokens: int, ref_tokens: int = 0, world_size: int = 1,
             compute: str | None = None) -> Estimate:
    """Expected peak bytes of one training step of ``cfg`` (a TrainConfig) on one device.

    ``tokens``: image tokens of the largest sample; ``text_tokens``: its context length; ``ref_tokens``:
    its reference tokens (RACL keys); ``compute``: the compute dtype (default ``cfg.model.dtype``, as on
    a CUDA GPU; ComfyUI computes in fp32 on a CPU)."""
    c, d = cfg, dims
    w_bytes = DTYPE_BYTES[c.model.dtype]
    a = DTYPE_BYTES[compute or c.model.dtype]
    fp8 = c.model.weight_dtype == "fp8_e4m3fn"
    full = set(c.lora.full_finetune_blocks)
    n = d.num_blocks
    swap = c.train.blocks_to_swap
    fsdp = c.distributed.strategy == "fsdp" and world_size > 1
    est = Estimate(d, tokens, text_tokens)
    L, Lt, D, F = tokens, text_tokens, d.dim, d.ffn_dim

    # -- weights
    lw, other = d.block_linear_weights(), d.block_other()
    linear_b = 1 if fp8 else w_bytes
    block_b = [(w_bytes if i in full else linear_b) * lw + w_bytes * other for i in range(n)]
    patch, rest = d.outside_params()
    outside_b = 4 * patch + w_bytes * rest
    resident = [i for i in range(n) if i < n - swap]
    if fsdp:
        total = sum(block_b) + outside_b
        gathered = 2 * max(block_b)
        est.lines.append(Line("weights", total / world_size + gathered,
                              f"{_gib(total)} / {world_size} processes (FSDP) + 2 gathered blocks {_gib(gathered)}"))
    else:
        how = (f"{n - swap} blocks x {lw / 1e6:.0f}M linear weights x {linear_b} B"
               + (" (fp8)" if fp8 else "") + f" + {other / 1e3:.0f}K others x {w_bytes} B"
               + f" + outside blocks {_gib(outside_b)}")
        if swap:
            how += f"; {swap} swapped blocks ({_gib(sum(block_b[i] for i in range(n - swap, n)))}) in host memory"
        est.lines.append(Line("weights", sum(block_b[i] for i in resident) + outside_b, how))

    # -- trainable tensors
    targets = {"self_attn.q": (D, D), "self_attn.k": (D, D), "self_attn.v": (D, D), "self_attn.o": (D, D),
               "cross_attn.q": (D, D), "cross_attn.k": (D, D), "cross_attn.v": (D, D), "cross_attn.o": (D, D),
               "ffn.0": (D, F), "ffn.2": (F, D)}
    lora_blocks = [i for i in (range(n) if c.lora.blocks == "all" else c.lora.blocks) if i not in full]
    per_block = sum(c.lora.rank * (i + o) for t, (i, o) in targets.items() if t in c.lora.targets)
    trainable = per_block * len(lora_blocks) + len(full) * (lw + other - 6 * D)
    opt = {"adamw": 8.0, "adam": 8.0, "sgd": 0.0, "adamw8bit": 2.0 + 8 / 256}[c.optimizer.name]
    est.lines.append(Line("trainable", trainable * (4 + 4 + opt),
                          f"{trainable / 1e6:.1f}M parameters x (4 B fp32 + 4 B gradient + {opt:g} B "
                          f"{c.optimizer.name} state)" + (" + DDP gradient buckets" if world_size > 1 and not fsdp
                                                          else "")))
    if world_size > 1 and not fsdp:
        est.lines[-1].bytes += trainable * 4

    # -- what forward keeps for backward
    ld = L * D * a
    outside_act = OUTSIDE_PER_TOKEN_DIM * ld + TEXT_PER_TOKEN_DIM / 3 * Lt * D * a
    saved_block = L * a * (SAVED_PER_TOKEN_DIM * D + SAVED_PER_TOKEN_FFN * F) + 4 * Lt * D * a
    if c.train.gradient_checkpointing:
        kept = 0 if c.train.offload_activations else (n - 1) * ld
        how = ("block inputs offloaded to host memory ({} there)".format(_gib((n - 1) * ld))
               if c.train.offload_activations else f"{n - 1} block inputs x {L} tokens x {D} x {a} B")
        est.lines.append(Line("activations kept (checkpointed)", kept + outside_act,
                              how + f" + embeddings/head {_gib(outside_act)}"))
    else:
        est.lines.append(Line("activations kept (no checkpointing)", (n - 1) * saved_block + outside_act,
                              f"{n - 1} blocks x {_gib(saved_block)} saved + embeddings/head"))
    # -- one block in backward
    est.lines.append(Line("one block recomputed + backward", saved_block + BACKWARD_PER_TOKEN_FFN * L * F * a,
                          f"{L} tokens x ({SAVED_PER_TOKEN_DIM} x {D} + {SAVED_PER_TOKEN_FFN + BACKWARD_PER_TOKEN_FFN:g}"
                          f" x {F}) x {a} B + text {_gib(4 * Lt * D * a)}"))
    casts = fp8 or swap > 0 or a != w_bytes
    if casts and c.train.gradient_checkpointing:
        est.lines.append(Line("one block's weights cast", (lw + other) * a,
                              f"{(lw + other) / 1e6:.0f}M x {a} B (ComfyUI casts per use; backward keeps one block's)"))
    elif casts:
        est.lines.append(Line("every block's weights cast", n * (lw + other) * a,
                              f"{n} x {(lw + other) / 1e6:.0f}M x {a} B (without checkpointing autograd keeps them all)"))
    # -- RACL
    racl_on = c.racl.lambda_racl > 0 and ref_tokens > 0 and (c.racl.layers == "all" or bool(c.racl.layers))
    if racl_on:
        budget = c.racl.budget_bytes or RACL_DEFAULT_BUDGET_FRACTION * ld
        est.lines.append(Line("RACL temporaries", budget + 2 * ld + ref_tokens * D * 4,
                              f"budget {_gib(budget)} + dq, dk {_gib(2 * ld)} + fp32 key accumulator "
                              f"{ref_tokens} x {D} x 4 B"))
    if c.train.offload_activations:
        est.notes.append(f"host memory for offloaded block inputs: {_gib((n - 1) * ld)} "
                         f"(+ {_gib(sum(block_b[i] for i in range(n - swap, n)))} swapped weights)"
                         if swap else f"host memory for offloaded block inputs: {_gib((n - 1) * ld)}")
    elif swap:
        est.notes.append(f"host memory for swapped weights: {_gib(sum(block_b[i] for i in range(n - swap, n)))}")
    return est


def sample_size(cfg, frames: int | None = None, refs: int | None = None,
                token_px: int = 16) -> tuple[int, int, int, int]:
    """(frames, image tokens, text tokens, reference tokens) of the largest sample the config trains:
    ``data.max_shots`` shots plus ``refs`` references (default 3), capped by ``data.max_latent_frames``;
    each shot and each described character one prompt segment of ``data.text_min_length``. ``token_px``:
    pixels per image token each way (WanDims.token_px)."""
    d = cfg.data
    per_frame = (d.height // token_px) * (d.width // token_px)
    shots_frames = d.max_shots * (d.repeat // 4)
    refs = 3 if refs is None else refs
    if frames is None:
        frames = min(d.max_latent_frames, shots_frames + refs)
    refs = max(0, min(refs, frames - 1))
    segments = max(1, frames - refs) // max(1, d.repeat // 4) + refs
    return frames, frames * per_frame, segments * d.text_min_length, refs * per_frame
