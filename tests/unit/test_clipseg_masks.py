"""CLIPSeg masks end to end on a tiny random-weight model built offline: one grey <stem>.mask.png of the image's
size per image, kept unless replace, never scanned as a training image; the threshold makes a binary mask."""

import numpy as np
import pytest
from PIL import Image

from loramix.core.config import DatasetConfig
from loramix.core.errors import LoramixError
from loramix.core.events import CancelToken
from loramix.embedded.tiny import build_tiny_clipseg
from tests.conftest import make_folder
from trainers.clipseg_masks import make_masks, mask_image
from trainers.dataset import scan_folder


@pytest.fixture(scope="module")
def clipseg(tmp_path_factory):
    return str(build_tiny_clipseg(tmp_path_factory.mktemp("clipseg")))


def test_masks_are_written_beside_the_images_and_never_trained_on(tmp_path, clipseg):
    data = make_folder(tmp_path / "data", n=3, sizes=[(64, 64), (80, 48)])
    result = make_masks(str(data), "person", clipseg, batch_size=2)
    assert sorted(p.name for p in result.written) == ["img0.mask.png", "img1.mask.png", "img2.mask.png"]
    with Image.open(data / "img1.mask.png") as mask:
        assert mask.mode == "L" and mask.size == (80, 48)
    assert len(scan_folder(DatasetConfig(data_dir=str(data), resolution=64))) == 3  # masks are not images
    (data / "img0.mask.png").write_bytes(b"mine")
    again = make_masks(str(data), "person", clipseg)
    assert again.skipped == 3 and not again.written and (data / "img0.mask.png").read_bytes() == b"mine"
    replaced = make_masks(str(data), "person", clipseg, threshold=0.5, replace=True)
    assert len(replaced.written) == 3
    with Image.open(data / "img0.mask.png") as mask:
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}


def test_mask_values_and_threshold():
    prob = np.array([[0.0, 0.25], [0.5, 1.0]])
    assert np.asarray(mask_image(prob)).tolist() == [[0, 64], [128, 255]]
    assert np.asarray(mask_image(prob, threshold=0.5)).tolist() == [[0, 0], [255, 255]]  # at the threshold: in


def test_cancel_and_errors(tmp_path, clipseg):
    data = make_folder(tmp_path / "data", n=3)
    cancel = CancelToken()
    result = make_masks(str(data), "cat", clipseg, batch_size=1, cancel=cancel,
                        on_event=lambda e: cancel.cancel() if e.kind == "step" else None)
    assert result.cancelled and len(result.written) == 1
    with pytest.raises(LoramixError, match="masks.prompt"):
        make_masks(str(data), " ", clipseg)


def test_masks_command(tmp_path, clipseg, capsys):
    from loramix.cli import main

    data = make_folder(tmp_path / "data", n=2)
    assert main(["masks", str(data), "--prompt", "cat", "--model", clipseg, "--threshold", "0.5"]) == 0
    assert "Wrote 2 masks" in capsys.readouterr().err
    assert main(["masks", str(data), "--prompt", "cat", "--model", clipseg]) == 0
    err = capsys.readouterr().err
    assert "Wrote 0 masks" in err and "2 kept" in err


def test_masked_loss_reads_the_masks_written_here(tmp_path, clipseg):
    from trainers.masks import load_mask

    data = make_folder(tmp_path / "data", n=1, sizes=[(80, 48)])
    make_masks(str(data), "cat", clipseg, threshold=0.5)
    (item,) = scan_folder(DatasetConfig(data_dir=str(data), resolution=64))
    loaded = load_mask(item)
    with Image.open(data / "img0.mask.png") as written:
        assert loaded.size == (80, 48) and np.array_equal(np.asarray(loaded), np.asarray(written))
