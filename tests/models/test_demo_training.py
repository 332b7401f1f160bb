"""A few seeded training steps: checkpoints are written, loadable, reproducible, side-effect free."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from models.demo import DIGITS, SHAPES
from models.demo_training import build_model, train_digits, train_shapes


def test_digits_training_is_seeded_and_learns(tmp_path: Path) -> None:
    threads, rng_state = torch.get_num_threads(), torch.get_rng_state()
    first = train_digits(tmp_path / "a", seed=3, epochs=2)
    assert torch.get_num_threads() == threads  # the server's settings survive training
    assert torch.equal(torch.get_rng_state(), rng_state)
    second = train_digits(tmp_path / "b", seed=3, epochs=2)
    assert first == second
    assert first > 0.5  # two epochs: far above the 0.1 of chance
    a = (tmp_path / "a" / DIGITS.checkpoint_file).read_bytes()
    assert a == (tmp_path / "b" / DIGITS.checkpoint_file).read_bytes()
    build_model(DIGITS).load_state_dict(load_file(tmp_path / "a" / DIGITS.checkpoint_file))


def test_shapes_training_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    score = train_shapes(tmp_path, seed=1, steps=2)
    assert 0.0 <= score <= 1.0
    build_model(SHAPES).load_state_dict(load_file(tmp_path / SHAPES.checkpoint_file))
