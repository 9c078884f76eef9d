"""Packing references and shots into one latent video, and reading keyframes back out.

The VAE is passed in. It needs ComfyUI's VAE interface:
``encode(pixels [F, H, W, 3] in 0..1) -> latent [1, C, f, h, w]`` and
``decode(latent [1, C, f, h, w]) -> pixels [1, F, H, W, 3]`` (a [F, H, W, 3] result is accepted too).
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch

from .layout import StoryLayout

# Shots still to be generated are encoded as mid-grey: the sampler replaces them with noise,
# and the causal VAE means a placeholder never leaks into earlier shots.
PLACEHOLDER_GREY = 0.5


class VideoVAE(Protocol):
    def encode(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latent: torch.Tensor) -> torch.Tensor: ...


def shot_video(layout: StoryLayout, shot_images: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """The shots as one pixel video [F, H, W, 3]: shot 0 repeated T-3 times, later shots T times."""
    if len(shot_images) != layout.num_shots:
        raise ValueError(f"expected {layout.num_shots} shot images (or None), got {len(shot_images)}")
    frames = []
    for j, image in enumerate(shot_images):
        if image is None:
            image = torch.full((layout.height, layout.width, 3), PLACEHOLDER_GREY)
        if tuple(image.shape) != (layout.height, layout.width, 3):
            raise ValueError(f"shot {j + 1} image is {tuple(image.shape)}, expected "
                             f"{(layout.height, layout.width, 3)}: fit it first")
        frames.append(image.float().unsqueeze(0).expand(layout.shot_repeats(j), -1, -1, -1))
    return torch.cat(frames, dim=0)


def _as_video_latent(latent: torch.Tensor) -> torch.Tensor:
    if latent.ndim != 5:
        raise ValueError(f"the VAE returned a latent of shape {tuple(latent.shape)}; a video VAE "
                         "(Wan2.1, Wan2.2) returns [1, C, frames, h, w]")
    return latent


def encode_references(vae: VideoVAE, refs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each reference alone, one latent frame each (encoding them together would mix them)."""
    return [_as_video_latent(vae.encode(ref.float().unsqueeze(0))) for ref in refs]


def pack_latent(vae: VideoVAE, layout: StoryLayout, refs: Sequence[torch.Tensor],
                shot_images: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Encode and join as [refs, shots] on the time axis: [1, C, K + S*T/4, h, w]."""
    if len(refs) != layout.num_refs:
        raise ValueError(f"expected {layout.num_refs} reference images, got {len(refs)}")
    shots = _as_video_latent(vae.encode(shot_video(layout, shot_images)))
    parts = encode_references(vae, refs) + [shots]
    latent = torch.cat([p.to(shots) for p in parts], dim=2)
    g = layout.geometry
    expected = (layout.num_latent_frames, layout.latent_height, layout.latent_width)
    if tuple(latent.shape[2:]) != expected:
        raise ValueError(f"packed latent has frames/size {tuple(latent.shape[2:])}, expected {expected}: the story was "
                         f"planned for {g.name}'s VAE ({g.temporal}x time, {g.spatial}x space compression); is this "
                         "that VAE?")
    return latent


def shot_latent(layout: StoryLayout, latent: torch.Tensor) -> torch.Tensor:
    """The shot frames of a packed latent (references dropped)."""
    return latent[:, :, layout.num_refs:]


def decode_keyframes(vae: VideoVAE, layout: StoryLayout, latent: torch.Tensor) -> torch.Tensor:
    """Decode the shot frames as one video and keep one keyframe per shot: [S, H, W, 3]."""
    video = vae.decode(shot_latent(layout, latent))
    if video.ndim == 5:
        video = video[0]
    return keyframes_from_video(layout, video)


def keyframes_from_video(layout: StoryLayout, video: torch.Tensor) -> torch.Tensor:
    if video.shape[0] < layout.num_video_frames:
        raise ValueError(f"decoded video has {video.shape[0]} frames, expected {layout.num_video_frames}")
    index = torch.tensor([layout.keyframe_index(j) for j in range(layout.num_shots)], device=video.device)
    return video.index_select(0, index)
