"""The backbone's latent geometry (dreamshot.layout.Geometry), read from ComfyUI's own objects.

- From the VAE (Shot Sequence Pack plans the story before any model is seen): latent channels
  (``vae.latent_channels``), spatial compression (``spacial_compression_encode()``) and time
  compression (``temporal_compression_decode()``), as comfy/sd.py sets them when it detects the VAE
  (Wan2.1: 16 channels, 8x; Wan2.2: 48 channels, 16x; both 4x in time).
- From the model (the sampler): its latent format's channels and the DiT's patch size
  (``diffusion_model.patch_size``); ``check_story_fits_model`` refuses a story packed for another
  backbone, naming the VAE to use.

Nothing here repeats those numbers: a backbone ComfyUI reads differently is read differently here.
"""

from __future__ import annotations

from ..errors import DreamShotInputError
from ..layout import WAN21, Geometry

# Names for messages only (what a user loaded), by (latent channels, spatial compression).
_VAE_NAMES = {(16, 8): "Wan2.1", (48, 16): "Wan2.2"}


def vae_geometry(vae, node: str | None = None) -> Geometry:
    """The geometry of a ComfyUI VAE (comfy.sd.VAE). An object without ComfyUI's VAE interface (the
    proof's BlockVAE and the tests' stand-ins, all Wan2.1-shaped) is taken as Wan2.1's."""
    if not hasattr(vae, "spacial_compression_encode"):
        return WAN21
    temporal = vae.temporal_compression_decode()
    channels = int(getattr(vae, "latent_channels", 0) or 0)
    spatial = vae.spacial_compression_encode()
    if not temporal or not isinstance(spatial, int) or getattr(vae, "latent_dim", 2) != 3:
        raise DreamShotInputError(
            "vae", f"this VAE ({type(getattr(vae, 'first_stage_model', vae)).__name__}) is not a video VAE: DreamShot "
            "packs references and shots as frames of one video latent.",
            "load wan_2.1_vae (Wan2.1, Wan2.2-A14B) or wan2.2_vae (Wan2.2-TI2V-5B) with Load VAE.", node=node)
    name = _VAE_NAMES.get((channels, spatial), f"this VAE ({channels} channels, {spatial}x)")
    return Geometry(latent_channels=channels, spatial=spatial, temporal=int(temporal), patch=WAN21.patch, name=name)


def model_geometry(model) -> tuple[int, tuple[int, int, int]]:
    """(latent channels, DiT patch size) of a ComfyUI MODEL (ModelPatcher), as its sampler sees them."""
    channels = model.get_model_object("latent_format").latent_channels
    patch = tuple(int(p) for p in model.get_model_object("diffusion_model").patch_size)
    return channels, patch


def check_story_fits_model(layout, model, node: str | None = None, input_name: str = "model") -> None:
    """Refuse a story whose latent was planned for another backbone than ``model``'s."""
    check_geometry_fits_model(layout.geometry, model, node, input_name)


def check_geometry_fits_model(g: Geometry, model, node: str | None = None, input_name: str = "model") -> None:
    """Refuse latents of geometry ``g`` (a story, a training cache) for another backbone than ``model``'s."""
    channels, patch = model_geometry(model)
    if channels != g.latent_channels:
        raise DreamShotInputError(
            input_name, f"the story was packed with {g.name}'s VAE ({g.latent_channels} latent channels) but this "
            f"model samples {channels}-channel latents.",
            "connect the VAE of this model to Shot Sequence Pack: wan2.2_vae for Wan2.2-TI2V-5B (48 channels), "
            "wan_2.1_vae for Wan2.1 and the Wan2.2-A14B experts (16 channels).", node=node)
    if patch != tuple(g.patch):
        raise DreamShotInputError(
            input_name, f"this model's DiT patchifies by {patch}, the story was planned for {tuple(g.patch)}.",
            "use a Wan text-to-video model (patch size (1, 2, 2)).", node=node)
