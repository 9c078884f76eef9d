"""The real ComfyUI CLIP, each distinct text encoded once per process (tests only): whole-story tests
draw their prompts from a few words, and the tiny UMT5 takes ~1 s a prompt on this CPU. ``tokenize``
and ``encode_from_tokens_scheduled`` are the real ones (comfy_bridge.text_encode calls exactly these)."""


class MemoClip:
    _cache: dict = {}

    def __init__(self, clip):
        self.clip = clip

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, text):
        key = (id(self.clip), text)
        if key not in self._cache:
            self._cache[key] = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))
        return self._cache[key]
