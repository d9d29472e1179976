"""The embedded demo base model (a tiny SD trained from scratch on coloured shapes) and sample style sets."""

from pathlib import Path

EMBEDDED_MODEL = Path(__file__).parent / "tiny-sd"
STYLE_SETS = Path(__file__).parent / "styles"
