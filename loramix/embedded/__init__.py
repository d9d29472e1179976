"""The embedded demo base model (a tiny SD trained from scratch on coloured shapes), sample style sets and
regularisation pictures."""

from pathlib import Path

EMBEDDED_MODEL = Path(__file__).parent / "tiny-sd"
STYLE_SETS = Path(__file__).parent / "styles"
REG_SET = Path(__file__).parent / "reg"  # plain pictures of other scenes, for dataset.reg_data_dir
