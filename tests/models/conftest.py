"""Model-test fixtures: ``device`` runs a test on cpu and on every CUDA device present."""

from collections.abc import Iterator

import pytest
import torch


def _devices() -> list[object]:
    """cpu, then each CUDA device (marked ``gpu``); without CUDA one skipped ``cuda`` case."""
    count = torch.cuda.device_count()
    if count == 0:
        return ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skip("needs CUDA")])]
    return ["cpu", *(pytest.param(f"cuda:{i}", marks=pytest.mark.gpu) for i in range(count))]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", _devices())


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    """Every model test starts from the same torch RNG state and leaves the global one as found."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield
