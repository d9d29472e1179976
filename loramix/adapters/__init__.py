"""What an adapter is: one class per type (LoRA, LoCon, LoHa, LoKr, DoRA, full) with its `delta()`, the
math every reader, the mixer and merge share. Stands on core only."""
