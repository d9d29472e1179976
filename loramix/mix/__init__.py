"""The mix engine: the `mixer` (slots, sliders, previews, bake), `merge` (a blend to one LoRA file),
`block_weights` (the block-weight extension's syntax and mapping), `mix_preset`, `lora_spec`, `xy_grid`, and
the ways a blend is applied: `stacked_hooks`, `file_originals`. Stands on core, adapters and formats."""
