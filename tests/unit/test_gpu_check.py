"""``make gpu-check``'s CPU-side logic: no CUDA is a clean no-op; the config, figures and report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from load_tests import gpu_check
from service.config import load_config


def test_without_cuda_it_says_so_and_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 0
    assert "no CUDA device here" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_the_config_serves_every_model_and_variant_with_its_options(tmp_path: Path) -> None:
    config = load_config(gpu_check.write_config(tmp_path), environ={})
    assert sorted(config.models) == sorted(f"{m}_{v}" for m in gpu_check.MODELS for v in gpu_check.VARIANTS)
    compiled = config.models["unet_bf16_cl_compiled"]
    assert (compiled.precision, compiled.channels_last, compiled.compile) == ("bfloat16", True, "default")
    folded = config.models["resnet18_fp16_cl_folded"]
    assert (folded.precision, folded.channels_last, folded.fold_batchnorm) == ("float16", True, True)
    assert config.models["resnet18_fp32_2replicas"].devices == ("cuda:0", "cuda:0")
    assert config.models["unet_fp32"].task == "segmentation"
    assert all(spec.batching.max_batch_size == gpu_check.MAX_BATCH for spec in config.models.values())


def test_figures_and_report() -> None:
    assert gpu_check.summarise([0.01] * 50 + [0.1], seconds=2.0) == pytest.approx((25.5, 10.0, 55.0))
    assert gpu_check.summarise([0.2, 0.2], seconds=0.4, images_per_request=32) == pytest.approx(
        (160, 200, 200)
    )
    assert gpu_check.summarise([], seconds=1.0) == (0.0, 0.0, 0.0)
    metrics = 'model_serve_device_memory_bytes{device="cuda:0"} 1024.0\nmodel_serve_ready 1.0\n'
    memory = gpu_check.device_memory(metrics)
    assert memory == {'model_serve_device_memory_bytes{device="cuda:0"}': 1024.0}
    rows = [gpu_check.Row("unet", "fp32", "served", 32, 1234.5, 20.0, 40.0, 1)]
    report = gpu_check.markdown(rows, {"device_memory_bytes": memory})
    assert "| unet | fp32 | served | 32 | 1,234.5 | 20.00 | 40.00 | 1 |" in report
    assert '"model_serve_device_memory_bytes{device=\\"cuda:0\\"}": 1024.0' in report
