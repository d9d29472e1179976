"""The most content a perfect style LoRA could keep: each style's own drawing of the held-out content scenes,
judged as `bench/time_to_style.py` judges a LoRA's pictures, raw and as the base model's VAE draws it back.

    python bench/style_ceiling.py                                   # the embedded model, the shipped styles and dusk
    python bench/style_ceiling.py --model /path/to/candidate --styles pastel,dusk

For each style (tools/make_styles.py's functions, dusk included) and each of the 12 content scenes of
`loramix.embedded.style_metrics.content_scenes`, the scene is rendered in that style and checked by
`content_kept` twice: the render itself, and its round trip through the base's VAE (encode, decode: what a
UNet LoRA drawing exactly that picture would give if the UNet's latents were the encoder's). The time-to-style
goal asks for 10 of 12 kept with the style reached; where the round trip keeps fewer, the VAE, not the
preset, sets the limit (the UNet's own latents can decode cleaner than the encoder's, so it is a guide, not a
bound). Also printed: the style statistic of the renders and of their round trip.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from loramix.core.quiet import quiet_libraries  # noqa: E402
from loramix.embedded.style_metrics import content_kept, content_scenes, style_statistic, vae_round_trip  # noqa: E402


def main(argv=None) -> None:
    from loramix.embedded.style_looks import HELD_OUT_STYLES, STYLES
    from loramix.mix.mixer import Mixer

    styles = {**STYLES, **HELD_OUT_STYLES}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="a diffusers folder (default: the embedded model)")
    parser.add_argument("--styles", default=",".join(styles))
    parser.add_argument("--prompts", type=int, default=12)
    args = parser.parse_args(argv)
    quiet_libraries()
    vae = Mixer.from_base(args.model).components.vae
    scenes = content_scenes(args.prompts)
    print(f"{args.model or 'the embedded model'}: {len(scenes)} content scenes")
    for name in args.styles.split(","):
        renders = [styles[name](scene).convert("RGB") for scene in scenes]
        back = vae_round_trip(vae, renders)
        kept = [content_kept(im, s).ok for im, s in zip(renders, scenes)]
        kept_back = [content_kept(im, s).ok for im, s in zip(back, scenes)]
        lost = [s.caption for s, ok in zip(scenes, kept_back) if not ok]
        print(f"{name}: renders keep {sum(kept)} of {len(scenes)}, through the VAE {sum(kept_back)}; statistic "
              f"{np.mean([style_statistic(name, im) for im in renders]):.4f} -> "
              f"{np.mean([style_statistic(name, im) for im in back]):.4f}"
              + (f"; lost through the VAE: {'; '.join(lost)}" if lost else ""), flush=True)


if __name__ == "__main__":
    main()
