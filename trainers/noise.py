"""The noise schedule a run trains and samples with: the base model's, with the prediction type and
zero-terminal SNR that the config asks for.

Zero-terminal SNR (Lin et al. 2023, diffusers' `rescale_zero_terminal_snr`) rescales the betas so the
last timestep is pure noise; the sampling scheduler is built from the same config (DDIM with the
rescale and "trailing" timesteps, as the paper samples). As kohya's
`fix_noise_scheduler_betas_for_zero_terminal_snr`, the training schedule keeps a tiny last alpha-bar
instead of 0, so SNR-based loss weights (min-SNR) stay finite.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

KOHYA_LAST_ALPHA_BAR = 4.8973451890853435e-08  # what kohya's fix puts in place of the last alpha-bar (0)


def configure_noise(components, prediction_type: str, zero_terminal_snr: bool) -> None:
    """Replace `components.noise_scheduler` as `model.prediction_type` (auto = the model's own) and
    `train.zero_terminal_snr` say; the family records the prediction type for the file's metadata."""
    from diffusers import DDPMScheduler

    changes: dict = {}
    if prediction_type != "auto":
        changes["prediction_type"] = prediction_type
    if zero_terminal_snr:
        changes.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    if not changes:
        return
    scheduler = DDPMScheduler.from_config(components.noise_scheduler.config, **changes)
    if zero_terminal_snr:
        scheduler.alphas_cumprod[-1] = KOHYA_LAST_ALPHA_BAR
    components.noise_scheduler = scheduler
    components.family.prediction_type = components.prediction_type
    log.info("Noise schedule: %s prediction%s", components.prediction_type,
             ", zero-terminal SNR" if zero_terminal_snr else "")
