"""A learnable proof at small scale: the "shapes story" (``python -m dreamshot.proof``).

Characters are coloured, textured shapes (dreamshot.shapes) whose names are re-assigned per story,
so only the reference images say who is who. A tiny Wan-format DiT is trained with dreamshot.train
(with and without RACL) and its samples are scored by a colour classifier: identity accuracy and
confusion rate for R2S versus independent per-shot generation.
"""
