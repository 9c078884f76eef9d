"""The bundled workflows, described once and written as ComfyUI UI-format JSON.

Run `python tests/support/build_workflows.py` (with ComfyUI findable, see tests/support/comfy_host.py)
after any node signature change: widget order is read from the live node definitions. A test
checks that workflows/ matches what this file builds.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.append(str(Path(__file__).resolve().parents[2]))  # dreamshot (after ComfyUI's root, see comfy_host)

from support.workflow_builder import Graph  # noqa: E402

from dreamshot.vistory.runner import OFFICIAL_NEGATIVE  # noqa: E402  (the official runner's negative prompt)

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"

WAN_REPO = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
DIT = "wan2.1_t2v_1.3B_fp16.safetensors"
TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
VAE = "wan_2.1_vae.safetensors"
CHARACTER_A = "dreamshot_character_a.png"
CHARACTER_B = "dreamshot_character_b.png"
FIRST_SHOT = "dreamshot_first_shot.png"
LOCATION = "dreamshot_location.png"
# The animate-between-boards template's inputs: a storyboard's keyframes, as DreamShot saved them.
BOARDS = tuple(f"storyboard_shot_{j}.png" for j in range(1, 5))
INPUT_IMAGES = (CHARACTER_A, CHARACTER_B, FIRST_SHOT, LOCATION) + BOARDS
# The released DreamShot weights (LL3RD/DreamShot) on Wan2.1-T2V-14B, as the official runner uses them.
DIT_14B = "wan2.1_t2v_14B_bf16.safetensors"
SFT_LORA = "sft_lora_model.safetensors"
RL_LORA = "rl_lora_model.safetensors"
DISTILL_LORA = "wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors"
# The example story (examples/story), as a user copies it into ComfyUI/input; and a Shot LoRA's file
# name for the Shot LoRA template (any Wan2.1 T2V LoRA the user has in models/loras).
STORY_FILE = "lighthouse.yaml"
STORY_DIR = REPO / "examples" / "story"
SHOT_LORA = "wan2.1_t2v_style_lora.safetensors"
# ComfyUI's native Wan2.1 first-last-frame model (the 720p 14B FLF2V, repackaged by Comfy-Org).
FLF2V = "wan2.1_flf2v_720p_14B_fp16.safetensors"
BETWEEN_FRAMES, BETWEEN_FPS = 33, 16          # per pair: 2 s at Wan's 16 fps (length 4n + 1)
SHOT_SCRIPT_SIZE = (340, 410)      # room for every widget (frontend 1.27 keeps a saved size as it is; Nodes 2.0 rows are taller)
# Wan2.2 (Comfy-Org's repackaged files): TI2V-5B with its own VAE; the T2V-A14B experts with Wan2.1's VAE.
WAN22_REPO = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
DIT_5B = "wan2.2_ti2v_5B_fp16.safetensors"
VAE_22 = "wan2.2_vae.safetensors"
DIT_A14B_HIGH = "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"
DIT_A14B_LOW = "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"


def _model_meta(name, folder, repo=WAN_REPO):
    return {"models": [{"name": name, "url": f"{repo}/{folder}/{name}", "directory": folder}]}


def _loaders(g: Graph):
    unet = g.add("UNETLoader", {"unet_name": DIT, "weight_dtype": "default"}, pos=(0, 0),
                 properties=_model_meta(DIT, "diffusion_models"))
    model = g.add("LoadDreamShotModel", {"lora_name": "None", "strength": 1.0, "lora_2_name": "None",
                                                "lora_2_strength": 1.0, "distill_lora_name": "None",
                                                "distill_lora_strength": 1.0}, pos=(360, 0), model=unet)
    clip = g.add("CLIPLoader", {"clip_name": TEXT_ENCODER, "type": "wan", "device": "default"}, pos=(0, 200),
                 properties=_model_meta(TEXT_ENCODER, "text_encoders"))
    vae = g.add("VAELoader", {"vae_name": VAE}, pos=(0, 360), properties=_model_meta(VAE, "vae"))
    return model, clip, vae


def _cast(g: Graph):
    img_a = g.add("LoadImage", {"image": CHARACTER_A}, pos=(0, 520))
    alice = g.add("DreamShotCharacterReference",
                  {"name": "Mira", "description": "a young woman with short red hair and a green raincoat"},
                  pos=(360, 520), image=img_a)
    img_b = g.add("LoadImage", {"image": CHARACTER_B}, pos=(0, 880))
    return g.add("DreamShotCharacterReference",
                 {"name": "Theo", "description": "an old man with a grey beard and a brown hat"},
                 pos=(360, 880), image=img_b, characters=alice)


STORY = [
    ("Mira waits at a rainy bus stop at night, neon reflections on the wet street, wide shot", "Mira"),
    ("Theo walks up under a black umbrella and offers to share it, medium shot", "Theo, Mira"),
    ("close-up of Mira smiling, rain drops on her raincoat", "Mira"),
    ("Mira and Theo walk away together down the glowing street, seen from behind", "Mira, Theo"),
]


def _shots(g: Graph, first_image=None):
    prev = None
    for j, (prompt, names) in enumerate(STORY):
        links = {"shots": prev} if prev is not None else {}
        if j == 0 and first_image is not None:
            links["image"] = first_image
        prev = g.add("DreamShotShotScript", {"prompt": prompt, "characters": names}, pos=(720, 120 + 600 * j),
                     size=SHOT_SCRIPT_SIZE, **links)
    return prev


def _pack(g, vae, clip, shots, mode, characters=None, **extra):
    links = {"characters": characters} if characters is not None else {}
    return g.add("DreamShotShotSequencePack", {"width": 832, "height": 480, "mode": mode, **extra}, pos=(1080, 200),
                 vae=vae, clip=clip, shots=shots, **links)


def _sample_and_save(g, model, seq, prefix, seed=42, pos=(1440, 200), sheet_title=None):
    sampler = g.add("DreamShotSampler", {"seed": seed, "steps": 30, "cfg": 3.0, "sampler_name": "euler",
                                         "scheduler": "simple", "ref_cfg": 2.0, "chunk_size": 0,
                                         "context_shots": 0}, pos=pos, size=(340, 420), model=model, sequence=seq)
    if sheet_title is None:
        g.add("SaveImage", {"filename_prefix": f"DreamShot/{prefix}"}, pos=(pos[0] + 380, pos[1]), images=sampler)
    else:
        g.add("DreamShotStoryboardSheet", {"title": sheet_title, "filename_prefix": f"DreamShot/{prefix}"},
              pos=(pos[0] + 380, pos[1]), size=(420, 480), keyframes=sampler, sequence=seq)
    return sampler


def reference_to_shot() -> Graph:
    g = Graph()
    model, clip, vae = _loaders(g)
    seq = _pack(g, vae, clip, _shots(g), "reference_to_shot", characters=_cast(g))
    _sample_and_save(g, model, seq, "reference_to_shot", sheet_title="The umbrella")
    return g


def two_characters_racl() -> Graph:
    """R2S with the RACL Attention Patch and boxes: Mira on the left, Theo on the right."""
    g = Graph()
    model, clip, vae = _loaders(g)
    model = g.add("DreamShotRACLAttentionPatch", {"strength": 1.0, "start_percent": 0.0, "end_percent": 0.6},
                  pos=(360, 200), model=model)
    prev = None
    for j, (prompt, names) in enumerate(STORY):
        links = {"shots": prev} if prev is not None else {}
        boxes = "Mira: 0, 0, 0.5, 1; Theo: 0.5, 0, 1, 1" if "," in names else ""
        prev = g.add("DreamShotShotScript", {"prompt": prompt, "characters": names, "character_boxes": boxes},
                     pos=(720, 120 + 600 * j), size=SHOT_SCRIPT_SIZE,
                     **links)
    seq = _pack(g, vae, clip, prev, "reference_to_shot", characters=_cast(g))
    _sample_and_save(g, model, seq, "two_characters_racl", sheet_title="Two characters, no swaps")
    return g


def scene_reference() -> Graph:
    """Two characters and one location: the bus stop is a Character Reference of kind location, listed
    by every shot like a character (role attention gives it the background of the shots with boxes)."""
    g = Graph()
    model, clip, vae = _loaders(g)
    model = g.add("DreamShotRACLAttentionPatch", {"strength": 1.0, "start_percent": 0.0, "end_percent": 0.6},
                  pos=(360, 200), model=model)
    place = g.add("LoadImage", {"image": LOCATION}, pos=(0, 1240))
    cast = g.add("DreamShotCharacterReference",
                 {"name": "Bus stop", "kind": "location",
                  "description": "a city bus stop at night in the rain, neon signs, wet street"},
                 pos=(360, 1240), image=place, characters=_cast(g))
    prev = None
    for j, (prompt, names) in enumerate(STORY):
        links = {"shots": prev} if prev is not None else {}
        boxes = "Mira: 0, 0, 0.5, 1; Theo: 0.5, 0, 1, 1" if "," in names else ""
        prev = g.add("DreamShotShotScript", {"prompt": prompt, "characters": f"{names}, Bus stop",
                                             "character_boxes": boxes}, pos=(720, 120 + 600 * j), size=SHOT_SCRIPT_SIZE,
                     **links)
    seq = _pack(g, vae, clip, prev, "reference_to_shot", characters=cast)
    _sample_and_save(g, model, seq, "scene_reference", sheet_title="Two characters at the bus stop")
    return g


def text_to_shot() -> Graph:
    g = Graph()
    model, clip, vae = _loaders(g)
    seq = _pack(g, vae, clip, _shots(g), "text_to_shot")
    _sample_and_save(g, model, seq, "text_to_shot")
    return g


def shot_to_shot() -> Graph:
    g = Graph()
    model, clip, vae = _loaders(g)
    first = g.add("LoadImage", {"image": FIRST_SHOT}, pos=(360, 1240))
    seq = _pack(g, vae, clip, _shots(g, first_image=first), "shot_to_shot", characters=_cast(g))
    _sample_and_save(g, model, seq, "shot_to_shot")
    return g


def edit_one_shot() -> Graph:
    """Make a storyboard, then regenerate shot 3 only (new seed); shots 1, 2, 4 stay identical."""
    g = Graph()
    model, clip, vae = _loaders(g)
    cast, shots = _cast(g), _shots(g)
    first = _sample_and_save(g, model, _pack(g, vae, clip, shots, "reference_to_shot", characters=cast),
                             "edit_before")
    seq2 = g.add("DreamShotShotSequencePack", {"width": 832, "height": 480, "mode": "edit", "lock_shots": "1, 2, 4"},
                 pos=(1440, 560), vae=vae, clip=clip, shots=shots, characters=cast, keyframes=first)
    _sample_and_save(g, model, seq2, "edit_after", seed=7, pos=(1880, 560), sheet_title="Shot 3 regenerated")
    return g


def official_14b(distill: bool = False) -> Graph:
    """The released weights with the official runner's settings: SFT + RL LoRAs at 1, shift 1, seed 42,
    720p, 6 shots per pass; 30 steps, text cfg 3, reference cfg 2 (with the LightX2V 4-step LoRA: 4
    steps, cfg 1, reference cfg 1.5)."""
    g = Graph()
    unet = g.add("UNETLoader", {"unet_name": DIT_14B, "weight_dtype": "default"}, pos=(0, 0),
                 properties=_model_meta(DIT_14B, "diffusion_models"))
    model = g.add("LoadDreamShotModel", {"lora_name": SFT_LORA, "strength": 1.0, "lora_2_name": RL_LORA,
                                         "lora_2_strength": 1.0,
                                         "distill_lora_name": DISTILL_LORA if distill else "None",
                                         "distill_lora_strength": 1.0}, pos=(360, 0), model=unet,
                  title="Load DreamShot Model (SFT + RL" + (" + LightX2V 4-step)" if distill else ")"))
    model = g.add("ModelSamplingSD3", {"shift": 1.0}, pos=(720, -160), model=model)
    clip = g.add("CLIPLoader", {"clip_name": TEXT_ENCODER, "type": "wan", "device": "default"}, pos=(0, 200),
                 properties=_model_meta(TEXT_ENCODER, "text_encoders"))
    vae = g.add("VAELoader", {"vae_name": VAE}, pos=(0, 360), properties=_model_meta(VAE, "vae"))
    seq = g.add("DreamShotShotSequencePack", {"width": 1280, "height": 720, "mode": "reference_to_shot",
                                              "negative_prompt": OFFICIAL_NEGATIVE, "fit": "pad_white"},
                pos=(1080, 200), vae=vae, clip=clip, shots=_shots(g), characters=_cast(g))
    sampler = g.add("DreamShotSampler", {"seed": 42, "steps": 4 if distill else 30, "cfg": 1.0 if distill else 3.0,
                                         "sampler_name": "euler", "scheduler": "simple",
                                         "ref_cfg": 1.5 if distill else 2.0, "chunk_size": 6, "context_shots": 0},
                    pos=(1440, 200), size=(340, 420), model=model, sequence=seq)
    name = "official_14b_4step" if distill else "official_14b"
    g.add("DreamShotStoryboardSheet", {"title": "DreamShot 14B (released weights)", "filename_prefix": f"DreamShot/{name}"},
          pos=(1820, 200), size=(420, 480), keyframes=sampler, sequence=seq)
    return g


def story_animatic() -> Graph:
    """The example story from Load Story through the sampler to the sheet, the animatic (Save Video) and
    the editorial timeline; Save Story writes the story beside them (with the timing the Shot Scripts
    carry)."""
    g = Graph()
    model, clip, vae = _loaders(g)
    story = g.add("DreamShotLoadStory", {"story": STORY_FILE}, pos=(360, 520), size=(320, 140))
    seq = g.add("DreamShotShotSequencePack", {"width": 832, "height": 480, "mode": "reference_to_shot"},
                pos=(720, 200), vae=vae, clip=clip, shots=(story, 1), characters=(story, 0))
    sampler = g.add("DreamShotSampler", {"seed": 42, "steps": 30, "cfg": 3.0, "sampler_name": "euler",
                                         "scheduler": "simple", "ref_cfg": 2.0, "chunk_size": 0, "context_shots": 0},
                    pos=(1080, 200), size=(340, 420), model=model, sequence=seq)
    sheet = g.add("DreamShotStoryboardSheet", {"filename_prefix": "DreamShot/lighthouse"}, pos=(1460, 0),
                  size=(420, 480), keyframes=sampler, sequence=seq)
    animatic = g.add("DreamShotStoryboardAnimatic", {"fps": 24.0, "transition": "cut", "captions": True},
                     pos=(1460, 520), size=(340, 420), keyframes=sampler, sequence=seq)
    g.add("SaveVideo", {"filename_prefix": "DreamShot/lighthouse_animatic"}, pos=(1920, 520), size=(420, 420),
          video=animatic)
    timeline = g.add("DreamShotEditorialTimeline", {"filename_prefix": "DreamShot/lighthouse"}, pos=(1920, 0),
                     size=(340, 260), keyframes=sampler, sequence=seq, animatic=animatic)
    save = g.add("DreamShotSaveStory", {"filename_prefix": "DreamShot/lighthouse_story"}, pos=(360, 720),
                 size=(320, 200), shots=(story, 1), characters=(story, 0))
    for node in (sheet, timeline, save):     # the story's title on each ('title' is also add()'s node title)
        node.links_in["title"] = (story, 3)
    return g


def shot_lora() -> Graph:
    """A Shot LoRA (a style LoRA from models/loras) on shots 2 and 4 only; the other shots see the model
    without it, in the same joint pass."""
    g = Graph()
    model, clip, vae = _loaders(g)
    model = g.add("DreamShotShotLoRA", {"lora_name": SHOT_LORA, "strength": 1.0, "shots": "2, 4"}, pos=(720, -200),
                  model=model)
    seq = _pack(g, vae, clip, _shots(g), "reference_to_shot", characters=_cast(g))
    _sample_and_save(g, model, seq, "shot_lora", sheet_title="A Shot LoRA on shots 2 and 4")
    return g


def animate_between_boards() -> Graph:
    """Each pair of consecutive keyframes of a storyboard (four boards here, one Load Image each) becomes
    a short clip with ComfyUI's native Wan2.1 first-last-frame nodes (WanFirstLastFrameToVideo ->
    KSampler -> VAE Decode); the clips are joined (each one's last frame, which is the next one's first,
    dropped) and saved as one video. No DreamShot node: the boards come from any DreamShot run."""
    g = Graph()
    unet = g.add("UNETLoader", {"unet_name": FLF2V, "weight_dtype": "default"}, pos=(0, 0),
                 properties=_model_meta(FLF2V, "diffusion_models"))
    clip = g.add("CLIPLoader", {"clip_name": TEXT_ENCODER, "type": "wan", "device": "default"}, pos=(0, 200),
                 properties=_model_meta(TEXT_ENCODER, "text_encoders"))
    vae = g.add("VAELoader", {"vae_name": VAE}, pos=(0, 360), properties=_model_meta(VAE, "vae"))
    positive = g.add("CLIPTextEncode", {"text": "the camera moves smoothly from the first storyboard frame to the "
                                                "next, the same characters and place, cinematic, natural motion"},
                     pos=(360, 120), size=(400, 160), clip=clip)
    negative = g.add("CLIPTextEncode", {"text": OFFICIAL_NEGATIVE}, pos=(360, 320), size=(400, 160), clip=clip)
    boards = [g.add("LoadImage", {"image": name}, pos=(0, 520 + 360 * j), size=(320, 320))
              for j, name in enumerate(BOARDS)]
    joined = None
    for j in range(len(boards) - 1):
        y = 520 * j
        flf = g.add("WanFirstLastFrameToVideo", {"width": 832, "height": 480, "length": BETWEEN_FRAMES,
                                                 "batch_size": 1}, pos=(820, y), size=(320, 260),
                    positive=positive, negative=(negative, 0), vae=vae, start_image=boards[j], end_image=boards[j + 1],
                    title=f"Boards {j + 1} -> {j + 2}")
        sampled = g.add("KSampler", {"seed": 42 + j, "steps": 20, "cfg": 5.0, "sampler_name": "uni_pc",
                                     "scheduler": "simple", "denoise": 1.0}, pos=(1180, y), size=(320, 470),
                        model=unet, positive=(flf, 0), negative=(flf, 1), latent_image=(flf, 2))
        frames = g.add("VAEDecode", {}, pos=(1540, y), size=(220, 60), samples=sampled, vae=vae)
        if j < len(boards) - 2:      # its last frame is the next clip's first: keep it once
            frames = g.add("ImageFromBatch", {"batch_index": 0, "length": BETWEEN_FRAMES - 1}, pos=(1540, y + 120),
                           size=(260, 100), image=frames)
        joined = frames if joined is None else g.add("ImageBatch", {}, pos=(1820, y), size=(220, 60), image1=joined,
                                                     image2=frames)
    video = g.add("CreateVideo", {"fps": float(BETWEEN_FPS)}, pos=(2080, 0), size=(270, 100), images=joined)
    g.add("SaveVideo", {"filename_prefix": "DreamShot/between_boards"}, pos=(2380, 0), size=(480, 420), video=video)
    return g


def wan22_5b() -> Graph:
    """Reference-to-shot on Wan2.2-TI2V-5B with the RACL patch: its own VAE (48 channels, 16x), 1280x704
    (sizes in multiples of 32), the official 5B sampling (shift 5, 50 steps, cfg 5). No DreamShot LoRA
    exists for Wan2.2: the base model runs every mode, with weaker identity (docs/backbones.md)."""
    g = Graph()
    unet = g.add("UNETLoader", {"unet_name": DIT_5B, "weight_dtype": "default"}, pos=(0, 0),
                 properties=_model_meta(DIT_5B, "diffusion_models", WAN22_REPO))
    model = g.add("LoadDreamShotModel", {"lora_name": "None", "strength": 1.0, "lora_2_name": "None",
                                         "lora_2_strength": 1.0, "distill_lora_name": "None",
                                         "distill_lora_strength": 1.0}, pos=(360, 0), model=unet)
    model = g.add("ModelSamplingSD3", {"shift": 5.0}, pos=(720, -160), model=model)
    model = g.add("DreamShotRACLAttentionPatch", {"strength": 1.0, "start_percent": 0.0, "end_percent": 0.6},
                  pos=(720, 0), model=model)
    clip = g.add("CLIPLoader", {"clip_name": TEXT_ENCODER, "type": "wan", "device": "default"}, pos=(0, 200),
                 properties=_model_meta(TEXT_ENCODER, "text_encoders"))
    vae = g.add("VAELoader", {"vae_name": VAE_22}, pos=(0, 360), properties=_model_meta(VAE_22, "vae", WAN22_REPO))
    seq = g.add("DreamShotShotSequencePack", {"width": 1280, "height": 704, "mode": "reference_to_shot"},
                pos=(1080, 200), vae=vae, clip=clip, shots=_shots(g), characters=_cast(g))
    sampler = g.add("DreamShotSampler", {"seed": 42, "steps": 50, "cfg": 5.0, "sampler_name": "euler",
                                         "scheduler": "simple", "ref_cfg": 2.0, "chunk_size": 6,
                                         "context_shots": 0}, pos=(1440, 200), size=(340, 420), model=model,
                    sequence=seq)
    g.add("DreamShotStoryboardSheet", {"title": "Wan2.2-TI2V-5B", "filename_prefix": "DreamShot/wan22_5b"},
          pos=(1820, 200), size=(420, 480), keyframes=sampler, sequence=seq)
    return g


def wan22_a14b() -> Graph:
    """Reference-to-shot on Wan2.2-T2V-A14B: the high-noise expert on 'model', the low-noise one on
    'model_low_noise' (each through its own Load DreamShot Model, for a LoRA per expert), switching at
    sigma 0.875 (the official boundary); Wan2.1's VAE; the official shift 12, 40 steps and guidance (cfg 4
    on the high-noise expert, cfg_low_noise 3 on the low-noise one: configs/wan_t2v_A14B.py)."""
    g = Graph()
    experts = []
    for i, name in enumerate((DIT_A14B_HIGH, DIT_A14B_LOW)):
        unet = g.add("UNETLoader", {"unet_name": name, "weight_dtype": "default"}, pos=(0, -360 + 180 * i),
                     properties=_model_meta(name, "diffusion_models", WAN22_REPO))
        model = g.add("LoadDreamShotModel", {"lora_name": "None", "strength": 1.0, "lora_2_name": "None",
                                             "lora_2_strength": 1.0, "distill_lora_name": "None",
                                             "distill_lora_strength": 1.0}, pos=(360, -360 + 180 * i), model=unet,
                      title=f"Load DreamShot Model ({'high' if i == 0 else 'low'}-noise expert)")
        experts.append(g.add("ModelSamplingSD3", {"shift": 12.0}, pos=(720, -360 + 180 * i), model=model))
    clip = g.add("CLIPLoader", {"clip_name": TEXT_ENCODER, "type": "wan", "device": "default"}, pos=(0, 200),
                 properties=_model_meta(TEXT_ENCODER, "text_encoders"))
    vae = g.add("VAELoader", {"vae_name": VAE}, pos=(0, 360), properties=_model_meta(VAE, "vae"))
    seq = g.add("DreamShotShotSequencePack", {"width": 1280, "height": 720, "mode": "reference_to_shot"},
                pos=(1080, 200), vae=vae, clip=clip, shots=_shots(g), characters=_cast(g))
    sampler = g.add("DreamShotSampler", {"seed": 42, "steps": 40, "cfg": 4.0, "sampler_name": "euler",
                                         "scheduler": "simple", "ref_cfg": 2.0, "chunk_size": 6, "context_shots": 0,
                                         "switch_boundary": 0.875, "switch_step": 0, "cfg_low_noise": 3.0},
                    pos=(1440, 200), size=(340, 480), model=experts[0], sequence=seq, model_low_noise=experts[1])
    g.add("DreamShotStoryboardSheet", {"title": "Wan2.2-T2V-A14B (two experts)", "filename_prefix": "DreamShot/wan22_a14b"},
          pos=(1820, 200), size=(420, 480), keyframes=sampler, sequence=seq)
    return g


WORKFLOWS_BUILT = {
    "dreamshot_reference_to_shot.json": reference_to_shot,
    "dreamshot_text_to_shot.json": text_to_shot,
    "dreamshot_shot_to_shot.json": shot_to_shot,
    "dreamshot_edit_one_shot.json": edit_one_shot,
    "dreamshot_two_characters_racl.json": two_characters_racl,
    "dreamshot_scene_reference.json": scene_reference,
    "dreamshot_official_14b.json": official_14b,
    "dreamshot_official_14b_4step.json": lambda: official_14b(distill=True),
    "dreamshot_story_animatic_timeline.json": story_animatic,
    "dreamshot_shot_lora.json": shot_lora,
    "dreamshot_animate_between_boards.json": animate_between_boards,
    "dreamshot_wan22_5b.json": wan22_5b,
    "dreamshot_wan22_a14b_two_experts.json": wan22_a14b,
}


def build_all(object_info: dict) -> dict[str, dict]:
    return {name: make().to_ui(object_info) for name, make in WORKFLOWS_BUILT.items()}


def dump(workflow: dict) -> str:
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    from support.comfy_host import in_process_object_info

    WORKFLOWS.mkdir(exist_ok=True)
    for name, wf in build_all(in_process_object_info()).items():
        tmp = WORKFLOWS / (name + ".tmp")
        tmp.write_text(dump(wf))
        os.replace(tmp, WORKFLOWS / name)


if __name__ == "__main__":
    main()
