"""The committed sample images, preprocessed exactly as the contract says, predict correctly."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.demo import DIGITS, SAMPLES_DIR, SHAPES, DemoModel
from models.demo_data import preprocess
from models.demo_training import SHAPES_SAMPLES, load_demo_model, mean_iou, shapes_sample, write_samples

_MAX_TOTAL_BYTES = 300 * 1024


def _contract_input(image: Image.Image, demo: DemoModel) -> torch.Tensor:
    """The contract, written out independently: convert, stretch (bilinear), [0, 1], normalise."""
    height, width = demo.size
    resized = image.convert("L" if demo.channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
    pixels = np.asarray(resized, dtype=np.float32).reshape(height, width, -1) / 255.0
    normalised = (pixels - np.array(demo.mean, np.float32)) / np.array(demo.std, np.float32)
    return torch.from_numpy(normalised).permute(2, 0, 1)


def _open(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


@pytest.mark.parametrize("name", ["digit_3.png", "shapes_2.jpg"])
def test_training_pipeline_is_the_contract(name: str) -> None:
    demo = DIGITS if name.startswith("digit") else SHAPES
    image = _open(SAMPLES_DIR / name)
    torch.testing.assert_close(preprocess(image, demo), _contract_input(image, demo))


def test_digit_samples_are_classified_as_their_digit() -> None:
    model = load_demo_model(DIGITS)
    paths = [SAMPLES_DIR / f"digit_{digit}.png" for digit in range(10)]
    batch = torch.stack([_contract_input(_open(path), DIGITS) for path in paths])
    with torch.inference_mode():
        predicted = model(batch).argmax(dim=1)
    assert predicted.tolist() == list(range(10))


@pytest.mark.parametrize(("name", "classes"), [(name, classes) for name, _, classes in SHAPES_SAMPLES])
def test_shapes_samples_give_sensible_masks(name: str, classes: tuple[int, ...]) -> None:
    model = load_demo_model(SHAPES)
    with torch.inference_mode():
        predicted = model(_contract_input(_open(SAMPLES_DIR / name), SHAPES)[None])[0].argmax(0)
    height, width = SHAPES.size
    truth_image = shapes_sample(name)[1].resize((width, height), Image.NEAREST)
    truth = torch.from_numpy(np.asarray(truth_image, dtype=np.int64).copy())
    assert set(truth.unique().tolist()) == {0, *classes}  # every listed shape was drawn
    assert set(predicted.unique().tolist()) >= {0, *classes}
    assert mean_iou((predicted > 0).long(), (truth > 0).long(), 2) > 0.85  # shapes vs background
    assert mean_iou(predicted, truth, len(SHAPES.labels)) > 0.75


def test_samples_are_reproducible_and_small(tmp_path: Path) -> None:
    written = write_samples(tmp_path)
    committed = [SAMPLES_DIR / path.name for path in written]
    assert sum(path.stat().st_size for path in committed) < _MAX_TOTAL_BYTES
    for fresh, kept in zip(written, committed, strict=True):
        if kept.suffix == ".png":  # lossless: the committed pixels are what the code draws
            assert np.array_equal(np.asarray(_open(fresh)), np.asarray(_open(kept))), kept.name
