"""The edge: files in the peers' layouts. `lora_io` reads and writes kohya / PEFT / diffusers LoRA files
(the metadata a LoRA carries is written there), `base_model` loads a base model from a folder, a hub id or
one checkpoint file, `families` says what SD 1.x / 2.x / SDXL / tiny are, `single_file` + `ldm_layout` the
original checkpoint layout, `published` strips local paths from published metadata."""
