"""Caching step: VAE latents and text embeddings computed once, so training loads only the DiT.

Layout of ``data.cache_dir``::

    index.json                      settings, and one entry per cached sequence
    empty_prompt.safetensors        "text": the empty prompt's embedding (caption dropout)
    sequences/<id>.safetensors      one file per manifest sequence

A sequence file holds (latents are ComfyUI's raw VAE latents, as a LATENT carries them; the
trainer applies the model's process_latent_in):

- ``latent.refs`` [16, K, h, w]: each reference image encoded alone (one latent frame each);
- ``latent.shots`` [16, S*T/4, h, w]: the shots encoded as ONE video (shot 0 once, later shots
  T times; dreamshot.packing), so each shot is T/4 latent frames;
- ``text.shot.<j>`` [L, 4096]: shot j's caption as UMT5 encodes it, trailing zero padding
  removed (it is padded back with exact zeros when training);
- ``text.char.<c>`` [L, 4096]: character c's description (only when it has one);
- ``mask.ref.<r>`` / ``mask.shot.<j>.<c>`` [H/16, W/16]: masks area-averaged onto the token grid
  (what RACL's role map uses);
- metadata ``dreamshot.sequence``: JSON with captions, character ids/names and the fingerprint.

Every file is written atomically; a sequence whose fingerprint (its manifest line, the bytes of
its images, the cache settings and the model files) matches is skipped, so an interrupted cache
run resumes where it stopped. Sequences are cut to ``data.max_shots`` shots (the causal VAE
makes a prefix exact).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..attention import NO_TEXT, pad_segments
from ..images import fit_image, fit_mask, load_image, load_mask
from ..layout import WAN21, Geometry, StoryLayout
from ..roles import pixel_mask_to_tokens
from ..atomic import atomic_save_safetensors, atomic_write_json
from .cache_tensors import CACHE_DTYPES, trim_text
from .config import TrainConfig
from .dataset import SequenceEntry, file_digest, read_manifest
from .video import encode_video

log = logging.getLogger("DreamShot")

CACHE_FORMAT = 1
INDEX = "index.json"
EMPTY_PROMPT = "empty_prompt.safetensors"
META_KEY = "dreamshot.sequence"


def _file_id(path: str) -> dict:
    st = os.stat(path)
    return {"name": Path(path).name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_settings(cfg: TrainConfig) -> dict:
    """What the cached tensors depend on besides the sequence itself."""
    d, m = cfg.data, cfg.model
    return {"format": CACHE_FORMAT, "width": d.width, "height": d.height, "repeat": d.repeat,
            "shot_fit": d.shot_fit, "reference_fit": d.reference_fit, "max_shots": d.max_shots,
            "cache_dtype": d.cache_dtype, "vae": _file_id(m.vae), "text_encoder": _file_id(m.text_encoder),
            "text_encoder_config": m.text_encoder_config}


def _fingerprint(settings: dict, seq: SequenceEntry, root: Path) -> str:
    h = hashlib.sha1(json.dumps(settings, sort_keys=True).encode())
    h.update(seq.source.encode())
    h.update(file_digest(root, seq.files()).encode())
    return h.hexdigest()


def _token_mask(mask: torch.Tensor, cfg: TrainConfig, fit: str, geometry: Geometry = WAN21) -> torch.Tensor:
    d = cfg.data
    fitted = fit_mask(mask, d.width, d.height, fit)
    grid = (d.height // geometry.pixel_multiple_h, d.width // geometry.pixel_multiple_w)
    return pixel_mask_to_tokens(fitted.clamp(0, 1), grid).view(*grid)


def geometry_meta(geometry: Geometry) -> dict:
    """A sequence file's record of the VAE geometry it was encoded with (absent: Wan2.1's)."""
    return {"latent_channels": geometry.latent_channels, "spatial": geometry.spatial, "temporal": geometry.temporal,
            "patch": list(geometry.patch), "name": geometry.name}


def read_geometry(meta: dict) -> Geometry:
    g = meta.get("geometry")
    return WAN21 if g is None else Geometry(g["latent_channels"], g["spatial"], g["temporal"], tuple(g["patch"]),
                                            g["name"])


def encode_sequence(seq: SequenceEntry, root: Path, vae, encode_text, cfg: TrainConfig,
                    geometry: Geometry = WAN21) -> tuple[dict, dict]:
    """(tensors, metadata dict) of one sequence. ``encode_text(text) -> [1, L, C]``; ``geometry``: the
    VAE's (comfy_bridge.geometry.vae_geometry), recorded in the metadata when it is not Wan2.1's."""
    from ..packing import encode_references, shot_video

    if seq.is_video:
        tensors, meta = encode_video(seq, root, vae, encode_text, cfg)
        if geometry != WAN21:
            meta["geometry"] = geometry_meta(geometry)
        return tensors, meta
    d = cfg.data
    dt = CACHE_DTYPES[d.cache_dtype]
    shots = seq.shots[:d.max_shots]
    shot_imgs = [fit_image(load_image(root / s.image, f"{seq.id}: {s.image}"), d.width, d.height, d.shot_fit, f"{seq.id}: {s.image}")
                 for s in shots]
    ref_imgs, ref_chars, ref_masks = [], [], []
    for ci, c in enumerate(seq.characters):
        for ref, mask in zip(c.references, c.masks):
            ref_imgs.append(fit_image(load_image(root / ref, f"{seq.id}: {ref}"), d.width, d.height, d.reference_fit, f"{seq.id}: {ref}"))
            ref_chars.append(ci)
            ref_masks.append(None if mask is None else _token_mask(load_mask(root / mask), cfg, d.reference_fit,
                                                                   geometry))
    layout = StoryLayout(num_refs=len(ref_imgs), num_shots=len(shots), width=d.width, height=d.height,
                         repeat=d.repeat, ref_characters=tuple(ref_chars), geometry=geometry)
    shot_latent = vae.encode(shot_video(layout, shot_imgs))
    if shot_latent.ndim != 5 or shot_latent.shape[2] != len(shots) * layout.frames_per_shot:
        raise ValueError(f"{seq.id}: the VAE gave a shot latent of shape {tuple(shot_latent.shape)}, expected "
                         f"{len(shots) * layout.frames_per_shot} frames: is model.vae a Wan VAE?")
    tensors = {"latent.shots": shot_latent[0].to(dt)}
    refs = encode_references(vae, ref_imgs)
    tensors["latent.refs"] = (torch.cat([r[0] for r in refs], dim=1) if refs
                              else shot_latent.new_zeros(shot_latent.shape[1], 0, *shot_latent.shape[3:])).to(dt)
    texts: dict[str, torch.Tensor] = {}

    def text(t: str) -> torch.Tensor:
        if t not in texts:
            texts[t] = trim_text(encode_text(t)).to(dt)
        return texts[t]

    char_index = {c.id: i for i, c in enumerate(seq.characters)}
    meta_shots = []
    for j, s in enumerate(shots):
        tensors[f"text.shot.{j}"] = text(s.caption)
        for cid, mpath in s.masks:
            tensors[f"mask.shot.{j}.{char_index[cid]}"] = _token_mask(load_mask(root / mpath), cfg, d.shot_fit,
                                                                      geometry).half()
        meta_shots.append({"caption": s.caption, "characters": [char_index[c] for c in s.characters],
                           "masked": [char_index[c] for c, _ in s.masks]})
    for ci, c in enumerate(seq.characters):
        if c.description.strip():
            tensors[f"text.char.{ci}"] = text(c.description)
    for r, m in enumerate(ref_masks):
        if m is not None:
            tensors[f"mask.ref.{r}"] = m.half()
    meta = {"id": seq.id, "line": seq.line, "width": d.width, "height": d.height, "repeat": d.repeat,
            "shots": meta_shots, "ref_characters": ref_chars, "ref_masked": [m is not None for m in ref_masks],
            "characters": [{"id": c.id, "name": c.name, "description": c.description,
                            "has_text": bool(c.description.strip())} for c in seq.characters],
            "cut_shots": max(0, len(seq.shots) - len(shots))}
    if geometry != WAN21:   # a Wan2.1 cache's files stay byte-identical to before
        meta["geometry"] = geometry_meta(geometry)
    return tensors, meta


def run_cache(cfg: TrainConfig) -> dict:
    """Encode every manifest sequence that is not cached yet; write the index. Returns the index."""
    cfg.validate(need=("model.vae", "model.text_encoder", "data.dataset", "data.cache_dir"))
    root = Path(cfg.data.dataset)
    sequences = read_manifest(root)
    from ..comfy_bridge.headless import import_comfy

    import_comfy(cfg.model.comfyui_path or None, path_option="model.comfyui_path")
    from ..comfy_bridge import training as bridge

    cache = Path(cfg.data.cache_dir)
    (cache / "sequences").mkdir(parents=True, exist_ok=True)
    settings = cache_settings(cfg)
    todo = []
    entries = []
    for seq in sequences:
        fp = _fingerprint(settings, seq, root)
        path = cache / "sequences" / f"{seq.id}.safetensors"
        entries.append((seq, fp, path))
        if _cached_fingerprint(path) != fp:
            todo.append((seq, fp, path))
    log.info("DreamShot cache: %d sequence(s), %d already cached, %d to encode", len(sequences),
             len(sequences) - len(todo), len(todo))
    vae = clip = None
    if todo or not (cache / EMPTY_PROMPT).exists():
        clip = bridge.load_text_encoder(cfg.model.text_encoder, cfg.model.text_encoder_config or None)
        atomic_save_safetensors(cache / EMPTY_PROMPT, {"text": trim_text(bridge.encode_text(clip, "")).to(
            CACHE_DTYPES[cfg.data.cache_dtype])}, {"dreamshot.settings": json.dumps(settings, sort_keys=True)})
    geometry = WAN21
    if todo:
        from ..comfy_bridge.geometry import vae_geometry

        vae = bridge.load_vae(cfg.model.vae)
        geometry = vae_geometry(vae)
    from tqdm import tqdm

    start = time.perf_counter()
    for seq, fp, path in tqdm(todo, desc="DreamShot cache", disable=not todo or not cfg.logging.progress):
        tensors, meta = encode_sequence(seq, root, vae, lambda t: bridge.encode_text(clip, t), cfg, geometry)
        meta["fingerprint"] = fp
        atomic_save_safetensors(path, tensors, {META_KEY: json.dumps(meta)})
    if todo:
        log.info("DreamShot cache: encoded %d sequence(s) in %.1fs", len(todo), time.perf_counter() - start)
    index = {"format": CACHE_FORMAT, "settings": settings, "dataset": str(root),
             "sequences": [{"id": s.id, "file": f"sequences/{s.id}.safetensors", "fingerprint": fp,
                            "num_shots": min(len(s.shots), cfg.data.max_shots),
                            "num_refs": sum(len(c.references) for c in s.characters)}
                           for s, fp, _ in entries]}
    atomic_write_json(cache / INDEX, index)
    stale = {p.name for p in (cache / "sequences").glob("*.safetensors")} - {p.name for _, _, p in entries}
    if stale:
        log.info("DreamShot cache: %d file(s) in %s are not in the manifest any more (not used): %s",
                 len(stale), cache / "sequences", ", ".join(sorted(stale)[:5]))
    return index


def _cached_fingerprint(path: Path) -> str | None:
    if not path.exists():
        return None
    import safetensors

    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get(META_KEY, "{}")).get("fingerprint")
    except Exception:  # noqa: BLE001  (a damaged file is simply encoded again)
        return None


# -- reading --------------------------------------------------------------------------------------
@dataclass
class CachedSequence:
    id: str
    shots_latent: torch.Tensor            # [C, S*fps, h, w] raw VAE latent
    refs_latent: torch.Tensor             # [C, K, h, w]
    shot_texts: list[torch.Tensor]        # per shot [L, C]
    char_texts: dict[int, torch.Tensor]   # character -> [L, C]
    ref_characters: list[int]             # per reference frame: its character
    ref_masks: list[torch.Tensor | None]  # per reference frame: [gh, gw] or None
    shot_characters: list[list[int]]
    shot_masks: list[dict[int, torch.Tensor]]
    width: int
    height: int
    repeat: int
    kind: str = "story"                   # "video": a video record, one clip as its only shot (modes.t2v)
    geometry: Geometry = WAN21            # the VAE's it was encoded with (Wan2.2-TI2V-5B: 48 channels, 16x)

    @property
    def num_shots(self) -> int:
        return len(self.shot_texts)

    @property
    def frames_per_shot(self) -> int:
        return self.repeat // self.geometry.temporal


class CacheReader:
    """The cache written by ``run_cache``; loads one sequence file at a time (training reads only the DiT)."""

    def __init__(self, cache_dir: str | Path, cfg: TrainConfig | None = None):
        self.dir = Path(cache_dir)
        path = self.dir / INDEX
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `python -m dreamshot.train cache --config ...` first")
        self.index = json.loads(path.read_text(encoding="utf-8"))
        if self.index.get("format") != CACHE_FORMAT:
            raise ValueError(f"{path}: cache format {self.index.get('format')} is not {CACHE_FORMAT}: run the cache "
                             "step again")
        s = self.index["settings"]
        if cfg is not None:
            d = cfg.data
            want = {"width": d.width, "height": d.height, "repeat": d.repeat}
            got = {k: s[k] for k in want}
            if want != got:
                raise ValueError(f"the cache in {self.dir} was made with {got}, the config asks for {want}: "
                                 "run the cache step again with this config (or point data.cache_dir elsewhere)")
        self.entries = self.index["sequences"]
        if not self.entries:
            raise ValueError(f"{path}: no cached sequences")
        import safetensors.torch

        self.empty_text = safetensors.torch.load_file(str(self.dir / EMPTY_PROMPT))["text"]

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, i: int, tensors: bool = True) -> CachedSequence:
        """Sequence ``i``; with ``tensors=False`` only its structure (read from the file header)."""
        import safetensors

        path = self.dir / self.entries[i]["file"]
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()[META_KEY])
            t = {k: f.get_tensor(k) for k in f.keys()} if tensors else _Placeholders()
        n_shots = len(meta["shots"])
        return CachedSequence(
            id=meta["id"], shots_latent=t["latent.shots"], refs_latent=t["latent.refs"],
            shot_texts=[t[f"text.shot.{j}"] for j in range(n_shots)],
            char_texts={ci: t[f"text.char.{ci}"] for ci, c in enumerate(meta["characters"]) if c["has_text"]},
            ref_characters=list(meta["ref_characters"]),
            ref_masks=[t.get(f"mask.ref.{r}") for r in range(len(meta["ref_characters"]))],
            shot_characters=[list(s["characters"]) for s in meta["shots"]],
            shot_masks=[{c: t[f"mask.shot.{j}.{c}"] for c in s["masked"]} for j, s in enumerate(meta["shots"])],
            width=meta["width"], height=meta["height"], repeat=meta["repeat"], kind=meta.get("kind", "story"),
            geometry=read_geometry(meta))


class _Placeholders(dict):
    def __getitem__(self, key):
        return None

    def get(self, key, default=None):
        return None


# -- one training sample ---------------------------------------------------------------------------
@dataclass
class Sample:
    """A packed story ready for the DiT: raw latent, which frames are noised, prompts and roles."""

    mode: str
    latent: torch.Tensor          # [1, C, F, h, w] raw VAE latent (refs first, then shots)
    noised: torch.Tensor          # [F] bool
    context: torch.Tensor         # [1, n_segments * seg_len, C_text]
    layout: StoryLayout
    frame_segments: list[int]
    num_segments: int
    segment_length: int
    ref_masks: list[torch.Tensor | None]
    shot_regions: list[dict[int, torch.Tensor]]   # generated shots only: character -> token-grid mask


def feasible_modes(seq: CachedSequence, max_shots: int, max_latent_frames: int,
                   s2s_keep_references: bool = True) -> list[str]:
    """Which modes this sequence can train (R2S needs a reference, S2S two shots; a video record
    trains only text_to_video, when its clip fits max_latent_frames)."""
    if seq.kind == "video":
        return ["text_to_video"] if seq.frames_per_shot <= max_latent_frames else []
    out = ["text_to_shot"]
    if _fit(seq, "reference_to_shot", max_shots, max_latent_frames)[1]:
        out.append("reference_to_shot")
    if _fit(seq, "shot_to_shot", max_shots, max_latent_frames, s2s_keep_references)[0] >= 2:
        out.append("shot_to_shot")
    return out


def _used_refs(seq: CachedSequence, n_shots: int) -> list[int]:
    """References of the characters who appear in the first n_shots shots (as the official code does)."""
    present = {c for chars in seq.shot_characters[:n_shots] for c in chars}
    return [r for r, c in enumerate(seq.ref_characters) if c in present]


def _fit(seq: CachedSequence, mode: str, max_shots: int, max_latent_frames: int, keep_refs: bool = True):
    fps = seq.frames_per_shot
    n_shots = min(seq.num_shots, max_shots)
    uses_refs = mode == "reference_to_shot" or (mode == "shot_to_shot" and keep_refs)
    refs = _used_refs(seq, n_shots) if uses_refs else []
    while n_shots > 1 and len(refs) + n_shots * fps > max_latent_frames:
        n_shots -= 1
        refs = _used_refs(seq, n_shots) if uses_refs else []
    if len(refs) + n_shots * fps > max_latent_frames:
        refs = refs[: max(0, max_latent_frames - n_shots * fps)]
    return n_shots, refs


def build_sample(seq: CachedSequence, mode: str, generator: torch.Generator, empty_text: torch.Tensor,
                 max_shots: int, max_latent_frames: int, text_min_length: int = 512,
                 caption_dropout: float = 0.0, s2s_keep_references: bool = True) -> Sample:
    """Pack refs + shots for ``mode``; draws the S2S prefix and caption dropout from ``generator``."""
    n_shots, refs = _fit(seq, mode, max_shots, max_latent_frames, s2s_keep_references)
    fps = seq.frames_per_shot
    if mode == "shot_to_shot":
        if n_shots < 2:
            raise ValueError(f"{seq.id}: shot_to_shot needs at least two shots")
        n_clean = int(torch.randint(1, n_shots, (1,), generator=generator))
    else:
        n_clean = 0
    if mode == "reference_to_shot" and not refs:
        raise ValueError(f"{seq.id}: reference_to_shot needs a reference of a character in its shots")
    ref_chars_used = [seq.ref_characters[r] for r in refs]
    # characters renumbered 0..: the order of their first reference
    char_order = list(dict.fromkeys(ref_chars_used))
    new_char = {c: i for i, c in enumerate(char_order)}
    layout = StoryLayout(num_refs=len(refs), num_shots=n_shots, width=seq.width, height=seq.height,
                         repeat=seq.repeat, ref_characters=tuple(new_char[c] for c in ref_chars_used),
                         clean_shots=tuple(j < n_clean for j in range(n_shots)), geometry=seq.geometry)
    parts = [seq.refs_latent[:, refs], seq.shots_latent[:, : n_shots * fps]]
    latent = torch.cat([p.float() for p in parts], dim=1).unsqueeze(0)
    noised = torch.tensor([not layout.frame_is_clean(f) for f in range(layout.num_latent_frames)])

    drop = (torch.rand(n_shots, generator=generator) < caption_dropout).tolist() if caption_dropout > 0 \
        else [False] * n_shots
    prompts = [empty_text if drop[j] else seq.shot_texts[j] for j in range(n_shots)]
    char_segment: dict[int, int] = {}
    for c in char_order:
        if c in seq.char_texts:
            char_segment[c] = len(prompts)
            prompts.append(seq.char_texts[c])
    frame_segments = []
    for f in range(layout.num_latent_frames):
        kind, index = layout.frame_owner(f)
        frame_segments.append(char_segment.get(ref_chars_used[index], NO_TEXT) if kind == "ref" else index)
    seg_len = max([text_min_length] + [p.shape[0] for p in prompts])
    if seg_len * len(prompts) == layout.num_tokens:   # the attention hook tells self/cross by key length
        seg_len += 1
    context = pad_segments([p.float().unsqueeze(0) for p in prompts], seg_len)

    regions: list[dict[int, torch.Tensor]] = []
    for j in range(n_shots):
        if layout.clean_shots[j]:
            regions.append({})   # RACL is asked of the shots being generated
            continue
        regions.append({new_char[c]: m.float() for c, m in seq.shot_masks[j].items() if c in new_char})
    return Sample(mode=mode, latent=latent, noised=noised, context=context, layout=layout,
                  frame_segments=frame_segments, num_segments=len(prompts), segment_length=seg_len,
                  ref_masks=[_ref_mask(seq.ref_masks[r]) for r in refs],
                  shot_regions=regions)


def _ref_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    # a saliency mask that lost every token when fitted says nothing: the whole reference counts
    return None if mask is None or not bool((mask > 0).any()) else mask.float()
