"""LLaVA-style video LLM, data collation, staged presets and the DDP/FSDP trainer."""
