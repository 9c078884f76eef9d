"""When the inference patch is active: a step or sigma range."""

from __future__ import annotations


def step_in_range(percent: float, start: float = 0.0, end: float = 1.0) -> bool:
    """True when sampling progress ``percent`` (0 = first step, 1 = last) lies in [start, end].

    The ComfyUI bridge turns sigmas into percents (or compares sigmas with
    ``sigma_in_range``), as ComfyUI's own start_percent/end_percent do.
    """
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"need 0 <= start <= end <= 1, got start={start}, end={end}")
    return start <= percent <= end


def sigma_in_range(sigma: float, sigma_start: float, sigma_end: float) -> bool:
    """Sigma form of ``step_in_range``: sigmas decrease, so sigma_end <= sigma <= sigma_start."""
    return sigma_end <= sigma <= sigma_start
