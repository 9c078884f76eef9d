"""DreamShot's socket types, declared once."""

from ..dreamshot.comfy_bridge.compat import io

Characters = io.Custom("DREAMSHOT_CHARACTERS")   # tuple[dreamshot.story.Character, ...]
Shots = io.Custom("DREAMSHOT_SHOTS")             # tuple[dreamshot.story.Shot, ...]
Sequence = io.Custom("DREAMSHOT_SEQUENCE")       # dreamshot.story.StorySequence

CATEGORY = "DreamShot"
