"""What one preview draws: the prompt and the picture settings, checked field by field.

`PreviewRequest`'s defaults are the only ones: the Mix tab's widgets, the flags of `loramix mix` and a mix
preset's `[request]` table all start from them, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from loramix.core.errors import LoramixError

SAMPLERS = ["ddim", "euler", "euler_a", "dpm++_2m", "unipc", "pndm"]
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # what a mixer computes in (`loramix.mix.mixer.preview_dtype`)


@dataclass
class PreviewRequest:
    """One preview's picture settings. Its defaults are the only ones: the Mix tab's widgets and the flags of
    `loramix mix` start from them. CFG 6: the guidance the embedded model's quality is measured at
    (loramix/embedded/README.md)."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 1
    steps: int = 20
    cfg_scale: float = 6.0
    sampler: str = "ddim"
    width: int = 0  # 0 = the base model's native size
    height: int = 0

    def validate(self) -> PreviewRequest:
        """Check every field (a web client can send anything); a LoramixError names the field. Returns self."""
        def bad(field_name: str, value, rule: str) -> LoramixError:
            return LoramixError(f"preview {field_name}: {value!r} is not allowed; {rule}.")

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str):
            raise bad("prompt", self.prompt if not isinstance(self.prompt, str) else self.negative_prompt,
                      "a prompt is text")
        if not is_int(self.steps) or not 1 <= self.steps <= 150:
            raise bad("steps", self.steps, "use a whole number from 1 to 150")
        for name in ("width", "height"):
            v = getattr(self, name)
            if not is_int(v) or not (v == 0 or (64 <= v <= 2048 and v % 8 == 0)):
                raise bad(name, v, "use 0 (the model's native size) or a multiple of 8 from 64 to 2048")
        if isinstance(self.cfg_scale, bool) or not isinstance(self.cfg_scale, (int, float)) or \
                not 0 <= self.cfg_scale <= 30:  # NaN fails this too
            raise bad("cfg_scale", self.cfg_scale, "use a number from 0 to 30")
        if not is_int(self.seed) or not 0 <= self.seed < 2**63:
            raise bad("seed", self.seed, "use a whole number from 0 up")
        if self.sampler not in SAMPLERS:
            raise bad("sampler", self.sampler, f"choose one of {', '.join(SAMPLERS)}")
        return self
