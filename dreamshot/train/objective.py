"""The training objective: flow matching as ComfyUI's Wan sampling defines it, with clean frames.

ComfyUI's Wan2.1 is a FLOW model (comfy/model_sampling.py ModelSamplingDiscreteFlow + CONST):
x_sigma = sigma * noise + (1 - sigma) * x0, the DiT predicts the velocity v = noise - x0 (at
timestep sigma * 1000), and the sampler's denoised output is x0_hat = x_sigma - sigma * v_hat.
Sampling uses sigma(t) = shift * t / (1 + (shift - 1) * t) ("time_snr_shift"; shift 8.0 for
Wan2.1 T2V in ComfyUI), so training draws t ~ U(0, 1) or logit-normal and applies the same
shift by default.

DreamShot's modes differ only in which latent frames are clean: a clean frame stays x0 and is
seen at timestep 0 (the denoise mask gives per-frame timesteps); only noised frames enter the
loss. All functions here are plain torch (no ComfyUI).
"""

from __future__ import annotations

import torch

STORY_MODES = ("reference_to_shot", "text_to_shot", "shot_to_shot")
# text_to_video: a video record's clip, every frame noised, one caption (plain Wan T2V; e.g. a prior)
MODES = STORY_MODES + ("text_to_video",)


def shift_sigma(t: torch.Tensor, shift: float) -> torch.Tensor:
    """ComfyUI's time_snr_shift: sigma = shift * t / (1 + (shift - 1) * t)."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def unshift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """The inverse of ``shift_sigma``: t = sigma / (shift - (shift - 1) * sigma)."""
    if shift == 1.0:
        return sigma
    return sigma / (shift - (shift - 1) * sigma)


def sample_sigmas(n: int, generator: torch.Generator, method: str = "uniform", shift: float = 1.0,
                  logit_mean: float = 0.0, logit_std: float = 1.0, sigma_min: float = 1e-3,
                  sigma_range: tuple[float, float] | None = None) -> torch.Tensor:
    """[n] sigmas in [sigma_min, 1]: t ~ U(0, 1) ("uniform") or sigmoid(N(mean, std)) ("logit_normal"),
    then the shift. ``sigma_range`` (lo, hi): the same distribution restricted to lo <= sigma < hi (one
    Wan2.2-A14B expert's range), drawn exactly by the inverse CDF over the matching t interval (no
    rejection: one draw per sigma, as without a range)."""
    if method not in ("uniform", "logit_normal"):
        raise ValueError(f"unknown timestep sampling {method!r}")
    if sigma_range is None:
        if method == "uniform":
            t = torch.rand(n, generator=generator)
        else:
            t = torch.sigmoid(torch.randn(n, generator=generator) * logit_std + logit_mean)
        return shift_sigma(t, shift).clamp(sigma_min, 1.0)
    lo, hi = (unshift_sigma(torch.tensor(float(v), dtype=torch.float64), shift) for v in sigma_range)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if method == "uniform":
        t = lo + u * (hi - lo)
    else:
        def cdf(x):
            return torch.special.ndtr((torch.logit(x) - logit_mean) / logit_std)
        p = cdf(lo) + u * (cdf(hi) - cdf(lo))
        t = torch.sigmoid(torch.special.ndtri(p) * logit_std + logit_mean)
    return shift_sigma(t, shift).clamp(max(sigma_min, float(sigma_range[0])), 1.0).float()


def noise_frames(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, noised: torch.Tensor) -> torch.Tensor:
    """x_t: noised frames sigma*noise + (1 - sigma)*x0, clean frames exactly x0.

    x0, noise: [B, C, F, h, w]; sigma: [B]; noised: [F] bool.
    """
    s = sigma.view(-1, 1, 1, 1, 1).to(x0)
    xt = s * noise + (1 - s) * x0
    keep = noised.to(x0.device).view(1, 1, -1, 1, 1)
    return torch.where(keep, xt, x0)


def denoise_mask(noised: torch.Tensor, h: int, w: int, batch: int = 1) -> torch.Tensor:
    """[B, 1, F, h, w] ComfyUI noise mask: 1 = generated (noised), 0 = kept clean."""
    f = noised.numel()
    return noised.float().view(1, 1, f, 1, 1).expand(batch, 1, f, h, w).contiguous()


def flow_matching_loss(denoised: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                       sigma: torch.Tensor, noised: torch.Tensor) -> torch.Tensor:
    """MSE between the predicted and the true velocity, over noised frames only.

    ComfyUI returns x0_hat = x_t - sigma * v_hat (CONST.calculate_denoised), so v_hat =
    (x_t - x0_hat) / sigma; the target is v = noise - x0 (d x_sigma / d sigma).
    """
    s = sigma.view(-1, 1, 1, 1, 1).to(torch.float32)
    v_hat = (x_t.float() - denoised.float()) / s
    target = noise.float() - x0.float()
    idx = torch.nonzero(noised.to(x0.device)).flatten()
    if not idx.numel():
        raise ValueError("no noised frame: nothing to learn from this sample")
    return (v_hat.index_select(2, idx) - target.index_select(2, idx)).pow(2).mean()


def choose_mode(generator: torch.Generator, ratios: dict[str, float], feasible: list[str]) -> str:
    """Draw a mode with the configured ratios, renormalised over the modes this sample allows."""
    # A story draws over the story modes only: the same draws as before video records existed.
    modes = MODES if "text_to_video" in feasible else STORY_MODES
    weights = torch.tensor([ratios.get(m, 0.0) if m in feasible else 0.0 for m in modes], dtype=torch.float64)
    if weights.sum() <= 0:
        raise ValueError(f"no mode with a ratio > 0 fits this sample (it allows {feasible})")
    return modes[int(torch.multinomial(weights, 1, generator=generator))]
