"""DreamShot's ComfyUI nodes (V3). Each node is thin: it converts ComfyUI types and calls dreamshot/."""

from .animatic import EditorialTimeline, StoryboardAnimatic
from .loaders import LoadDreamShotModel, register_model_folder
from .metrics import StoryMetrics
from .pack import ShotSequencePack
from .racl import RACLAttentionPatch
from .sampler import DreamShotSampler
from .sheet import StoryboardSheet
from .shot_lora import ShotLoRA
from .story_files import LoadStory, SaveStory
from .story_nodes import CharacterReference, ShotScript

NODES = [LoadDreamShotModel, CharacterReference, ShotScript, ShotSequencePack, DreamShotSampler, RACLAttentionPatch,
         StoryboardSheet, StoryMetrics, LoadStory, SaveStory, ShotLoRA, StoryboardAnimatic, EditorialTimeline]

__all__ = ["NODES", "register_model_folder"]
