"""Headless DreamShot fine-tuning: ``python -m dreamshot.train {check,cache,train} --config x.toml``.

Runs on the Wan2.1 T2V code of the user's ComfyUI checkout (imported headless), so the LoRA it
writes loads in Load DreamShot Model with no conversion. Modules: ``config`` (TOML ->
dataclasses), ``dataset`` (manifest format), ``cache`` (VAE latents + text embeddings),
``objective`` (flow matching, modes), ``trainer`` (the loop), ``checkpoint`` (atomic
checkpoints, resume), ``lora_io`` (metadata), ``distributed`` (torchrun, DDP/FSDP).
"""
