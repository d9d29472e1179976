"""loramix: train Stable Diffusion LoRA adapters and blend them. Shared runtime package."""

__version__ = "0.1.0"
