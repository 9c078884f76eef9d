"""Role attention: keep each character's identity coming from its own reference.

Multi-character confusion (A's face on B's body) happens in self-attention: the shot tokens of A's
body read identity from B's reference tokens. One token-level role map serves training (the RACL
loss) and inference (the masked self-attention patch).

- ``regions``: pixel masks and boxes onto the token grid; the group ids.
- ``role_map``: a story's reference tokens and shot regions (``build_role_map``).
- ``racl_loss``: the Role-Attention Consistency Loss (training).
- ``masked_attention``: role-masked self-attention (the RACL Attention Patch, inference).
- ``auto_regions``: regions for shots without a mask or box, from where their tokens look.
- ``schedule``: the step / sigma range the patch is active in.
- ``heads``: pieces the blockwise computations share.
"""

from .auto_regions import auto_regions
from .masked_attention import group_key_bias, role_bias_value, role_masked_attention_mass, role_masked_self_attention
from .racl_loss import (RACL_KINDS, RACLConfig, full_logsumexp, racl_from_char_mass, racl_from_probs, racl_loss,
                        ref_shot_attention)
from .regions import BACKGROUND, DEFAULT_THRESHOLD, UNCONSTRAINED, Box, RegionSpec, box_to_mask, pixel_mask_to_tokens
from .role_map import RoleMap, ShotRegion, build_role_map
from .schedule import sigma_in_range, step_in_range

__all__ = ["BACKGROUND", "Box", "DEFAULT_THRESHOLD", "RACLConfig", "RACL_KINDS", "RegionSpec", "RoleMap", "ShotRegion",
           "UNCONSTRAINED", "auto_regions", "box_to_mask", "build_role_map", "full_logsumexp", "group_key_bias",
           "pixel_mask_to_tokens", "racl_from_char_mass", "racl_from_probs", "racl_loss", "ref_shot_attention",
           "role_bias_value", "role_masked_attention_mass", "role_masked_self_attention", "sigma_in_range",
           "step_in_range"]
