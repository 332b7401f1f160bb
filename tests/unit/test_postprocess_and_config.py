"""Postprocess, config validation and checkpoint path rules as pure functions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from service.checkpoints.paths import resolve_checkpoint
from service.config import build_config, load_config
from service.errors import ConfigError, Forbidden, NotFound
from service.images.decode import DecodedImage
from service.images.plain_png import grey_png
from service.pipeline.tasks import (
    ClassificationTask,
    Job,
    SegmentationTask,
    Wants,
    class_mask,
    select_logits,
)


def _job(width: int = 4, height: int = 3, top_k: int = 5) -> Job:
    return Job.of_image(DecodedImage(torch.zeros(2, 2, 1, dtype=torch.uint8), width, height), Wants(top_k))


def test_classify_returns_softmax_top_k_per_image_best_first() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])
    first, second = ClassificationTask().postprocess(logits, [_job(top_k=2), _job(top_k=5)])
    assert first.indices == [1, 2]
    assert first.scores == pytest.approx(torch.softmax(logits[0], 0)[[1, 2]].tolist())
    assert second.indices[0] == 0 and len(second.indices) == 3  # capped at the class count


def test_segment_upsamples_to_each_images_own_size_and_counts_pixels() -> None:
    logits = torch.zeros(2, 3, 4, 4)
    logits[0, 2] = 1.0  # image 0: all class 2
    logits[1, 1, :, :2] = 1.0  # image 1: left half class 1, right half class 0
    first, second = SegmentationTask().postprocess(logits, [_job(7, 5), _job(8, 6)])
    assert first.mask.shape == (5, 7) and set(np.unique(first.mask)) == {2}
    assert first.class_pixel_counts == {"0": 0, "1": 0, "2": 35}
    assert second.mask.shape == (6, 8)
    assert (second.mask[:, 0] == 1).all() and (second.mask[:, -1] == 0).all()
    counts = np.bincount(second.mask.ravel(), minlength=3)
    assert second.class_pixel_counts == {str(i): int(n) for i, n in enumerate(counts)}


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_a_batch_of_mixed_sizes_answers_each_image_as_if_it_were_alone(layout: torch.memory_format) -> None:
    """Images are upsampled and masked together per output size; the order stays the batch's."""
    logits = torch.randn(5, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    logits = logits.contiguous(memory_format=layout)
    no_png = Job.of_image(
        DecodedImage(torch.zeros(2, 2, 1, dtype=torch.uint8), 12, 10), Wants(mask_png=False)
    )
    jobs = [_job(9, 7), _job(6, 6), _job(9, 7), no_png, _job(6, 6)]
    together = SegmentationTask().postprocess(logits, jobs)
    for row, job, answer in zip(logits, jobs, together, strict=True):
        (alone,) = SegmentationTask().postprocess(row[None].contiguous(), [job])
        assert answer.mask.shape == job.output_size
        assert np.array_equal(answer.mask, alone.mask)
        assert answer.class_pixel_counts == alone.class_pixel_counts
        assert answer.png == alone.png
    assert together[3].png is None and together[0].png is not None


def test_class_mask_takes_a_batch_of_score_maps() -> None:
    scores = torch.randint(0, 3, (3, 5, 8, 9), generator=torch.Generator().manual_seed(1)).float()
    for layout in (torch.contiguous_format, torch.channels_last):
        mask = class_mask(scores.contiguous(memory_format=layout))
        assert mask.shape == (3, 8, 9) and torch.equal(mask.long(), scores.argmax(dim=1))


def test_mask_png_round_trips_class_indices() -> None:
    from io import BytesIO

    from PIL import Image

    mask = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    with Image.open(BytesIO(grey_png(mask))) as image:
        assert image.mode == "L" and np.array_equal(np.asarray(image), mask)


def test_select_logits_from_tuples_and_dicts() -> None:
    a, b = torch.ones(1, 2), torch.zeros(1, 2)
    assert select_logits(a, None) is a
    assert select_logits((a, b), None) is a and select_logits((a, b), 1) is b
    assert select_logits({"out": a, "aux": b}, None) is a and select_logits({"out": a, "aux": b}, "aux") is b
    with pytest.raises(ConfigError, match="'output'"):
        select_logits({"logits": a}, None)
    with pytest.raises(ConfigError, match="index 5"):
        select_logits((a, b), 5)


def _raw(**model: object) -> dict[str, object]:
    entry = {
        "architecture": "models.lenet:lenet",
        "checkpoint": "x.pt",
        "input": {"size": [32, 32], "channels": 1},
    }
    entry.update(model)
    return {"models": {"digits": entry}}


def test_config_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    config = build_config(_raw(), base_dir=tmp_path, environ={})
    assert config.models["digits"].checkpoint == tmp_path / "x.pt"
    assert config.checkpoint_root == tmp_path / "checkpoints"
    assert config.default_model_name == "digits"


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (_raw(colour="red"), "models.digits.colour"),
        (_raw(batching={"max_batch": 4}), "models.digits.batching.max_batch"),
        (_raw(architecture="no_colon"), "models.digits.architecture"),
        (_raw(input={"size": [32, 32], "channels": 3, "mean": [0.1, 0.2]}), "models.digits.input"),
        ({**_raw(), "defualt_model": "digits"}, "defualt_model"),
        ({**_raw(), "default_model": "other"}, "other"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, raw: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        build_config(raw, base_dir=tmp_path, environ={})


def test_environment_overrides(tmp_path: Path) -> None:
    environ = {"MODEL_SERVE_ADMIN_TOKEN": "s3cret", "MODEL_SERVE_REQUEST_TIMEOUT_S": "2.5"}
    config = build_config(_raw(), base_dir=tmp_path, environ=environ)
    assert config.server.admin_token == "s3cret" and config.server.request_timeout_s == 2.5
    with pytest.raises(ConfigError, match=r"server\.max_body_bytes"):
        build_config(_raw(), base_dir=tmp_path, environ={"MODEL_SERVE_MAX_BODY_BYTES": "lots"})


def test_load_config_reports_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_checkpoint_paths_stay_under_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.pt").write_bytes(b"x")
    (tmp_path / "outside.pt").write_bytes(b"x")
    os.symlink(tmp_path / "outside.pt", root / "link.pt")
    assert resolve_checkpoint(root, "sub/a.pt") == root / "sub" / "a.pt"
    assert resolve_checkpoint(root, str(root / "sub" / "a.pt")) == root / "sub" / "a.pt"
    for refused in ("../outside.pt", "sub/../../outside.pt", str(tmp_path / "outside.pt"), "link.pt"):
        with pytest.raises(Forbidden):
            resolve_checkpoint(root, refused)
    with pytest.raises(NotFound):
        resolve_checkpoint(root, "sub/missing.pt")


@pytest.mark.parametrize("classes", [1, 2, 4, 21])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_class_mask_is_torch_argmax_ties_and_layouts_included(
    classes: int, layout: torch.memory_format
) -> None:
    generator = torch.Generator().manual_seed(classes)
    # small integers: many pixels with two or more classes tied for the top score
    scores = torch.randint(0, 3, (1, classes, 37, 53), generator=generator).float()
    scores = scores.contiguous(memory_format=layout)[0]
    mask = class_mask(scores)
    assert mask.dtype == torch.uint8
    assert torch.equal(mask.long(), scores.argmax(dim=0))


def test_every_task_the_config_allows_has_its_object() -> None:
    from typing import get_args

    from service.config import TaskName
    from service.pipeline.tasks import task_names

    assert task_names() == set(get_args(TaskName))


def test_each_task_owns_its_v2_outputs_and_playground_hints() -> None:
    classification, segmentation = ClassificationTask(), SegmentationTask()
    assert [o["name"] for o in classification.v2_outputs(10, (8, 8))] == list(classification.outputs)
    assert segmentation.v2_outputs(3, (8, 6)) == [{"name": "mask", "datatype": "UINT8", "shape": [-1, 8, 6]}]
    assert classification.playground.top_k and not classification.playground.mask
    assert segmentation.playground.mask and not segmentation.playground.top_k
    wants = classification.v2_wants([("probabilities", 3), ("class_index", None)])
    assert (wants.top_k, wants.probabilities, wants.mask_png) == (3, False, False)
    assert classification.v2_wants([("probabilities", None)]).probabilities
