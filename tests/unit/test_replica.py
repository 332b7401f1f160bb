"""Replica on the CPU with stand-in models: out-of-memory splitting, mixed batches, NaN outputs."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.config import InputSpec, ModelSpec
from service.errors import NonFiniteOutput
from service.images.decode import decode_image
from service.pipeline import devices
from service.pipeline import registry as registry_module
from service.pipeline.devices import CoreShare, cgroup_cpu_quota
from service.pipeline.replica import DeviceModel, ModelVersion, Replica
from service.pipeline.tasks import ClassificationTask, Job, Wants
from tests.support.archs import keep_busy

SPEC = ModelSpec(
    architecture="tests.support.archs:slow_classifier",
    checkpoint="unused.pt",
    input=InputSpec(size=(8, 8), channels=1, mean=(0.5,), std=(0.5,)),
)
TASK = ClassificationTask()


class _MemoryBound(torch.nn.Module):
    """Raises CUDA's out-of-memory error for batches above ``limit``; records batch sizes."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.head = torch.nn.Linear(1, 3)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.head(x.mean(dim=(2, 3)))


def _png(value: int, size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _replica_and_version(module: torch.nn.Module) -> tuple[Replica, ModelVersion]:
    replica = Replica(0, "m", torch.device("cpu"), input_shape=(8, 8, 1), max_batch_size=8, threads=1)
    model = DeviceModel(module.eval(), SPEC, torch.device("cpu"))
    return replica, ModelVersion("v", Path("unused.pt"), 0.0, 0.0, (model,))


def _jobs(count: int, top_k: int = 3) -> list[Job]:
    return [
        Job.of_image(decode_image(_png(10 * i), SPEC.input, max_pixels=10_000), Wants(top_k))
        for i in range(count)
    ]


def test_out_of_memory_splits_the_batch_until_it_fits() -> None:
    module = _MemoryBound(limit=2)
    replica, version = _replica_and_version(module)
    jobs = _jobs(7)
    try:
        outputs = replica.run(version, jobs, TASK)
    finally:
        replica.close()
    assert len(outputs) == 7 and all(len(o.indices) == 3 for o in outputs)
    assert max(size for size in module.seen if size <= 2) == 2 and 7 in module.seen
    model = version.device_models[0]
    with torch.inference_mode():  # each answer is its own image's, in order
        direct = [TASK.postprocess(model(model.normalise(job.pixels[None])), [job])[0] for job in jobs]
    assert [o.indices for o in outputs] == [d.indices for d in direct]


def test_a_batch_mixing_images_and_normalised_tensors_answers_each_as_alone() -> None:
    """Every door shares one batch: a v2 FP32 tensor beside /predict images, in order."""
    replica, version = _replica_and_version(_MemoryBound(limit=64))
    model = version.device_models[0]
    images = _jobs(3, top_k=3)
    tensor = model.normalise(images[1].pixels[None])[0] * 0.5  # any other normalised input
    mixed = [images[0], Job(tensor, (8, 8), Wants(3)), images[2]]
    try:
        together = replica.run(version, mixed, TASK)
        alone = [replica.run(version, [job], TASK)[0] for job in mixed]
    finally:
        replica.close()
    for mixed_answer, alone_answer in zip(together, alone, strict=True):
        assert mixed_answer.scores == pytest.approx(alone_answer.scores, abs=1e-6)
    assert together[0].indices == alone[0].indices and together[1].scores != together[0].scores


def test_non_finite_logits_fail_the_batch_with_a_clear_error() -> None:
    class _NaN(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 3), float("nan"))

    replica, version = _replica_and_version(_NaN())
    try:
        with pytest.raises(NonFiniteOutput, match="non-finite"):
            replica.run(version, _jobs(2), TASK)
    finally:
        replica.close()


@pytest.fixture(autouse=True)
def _no_threads_left_held() -> Iterator[None]:
    """Threads are counted process-wide: a test that left some held would skew the next."""
    yield
    assert (devices._HELD.threads, devices._HELD.wide) == (0, False)


def test_core_share_gives_all_cores_alone_and_splits_them_together() -> None:
    share = CoreShare(2, replicas=2)
    with share.claim() as alone:
        assert alone == 2
    with share.claim(work_waiting=True) as first:  # the other replica takes the rest at once
        assert first == 1
        with share.claim() as second:
            assert second == 1
        with CoreShare(2, replicas=1).claim() as another_models:  # one core is all that is free
            assert another_models == 1
    with share.claim() as again:
        assert again == 2


def test_core_share_counts_the_replica_that_queued_work_will_start() -> None:
    """Under load a batch that took every core alone would share them a moment later."""
    share = CoreShare(4, replicas=2)
    with share.claim(work_waiting=True) as first:
        assert first == 2
        # two cores are free, so it does not wait; the one wide lane is taken: one thread
        asked = time.monotonic()
        with share.claim(work_waiting=True) as second:
            assert second == 1
        assert time.monotonic() - asked < 1.0
    with CoreShare(4, replicas=1).claim(work_waiting=True) as only:  # nobody else will start
        assert only == 4


def _claim_in_thread(share: CoreShare, got: list[tuple[int, float]]) -> threading.Thread:
    """Claims from another thread, as another replica does; records its threads and when."""

    def claim() -> None:
        with share.claim() as threads:
            got.append((threads, time.monotonic()))

    thread = threading.Thread(target=claim)
    thread.start()
    return thread


def test_a_batch_waits_while_wide_batches_hold_every_core() -> None:
    """A third thread on two cores would stall every barrier of the wide forward."""
    share = CoreShare(2, replicas=2)
    got: list[tuple[int, float]] = []
    with share.claim() as wide:
        assert wide == 2
        waiting = _claim_in_thread(share, got)
        time.sleep(0.2)  # proves an absence (no claim while the cores are held): nothing to wait on
        assert waiting.is_alive() and got == []  # still waiting for a core
        ended = time.monotonic()
    waiting.join(timeout=5)
    assert len(got) == 1
    threads, started = got[0]
    assert threads == 2 and started >= ended  # alone once the wide batch ended: every core


def test_a_batch_waits_for_a_wide_one_only_so_long(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward that hangs on several threads must not stop every other batch for good."""
    monkeypatch.setattr(devices, "_WIDE_WAIT_S", 0.1)
    share = CoreShare(2, replicas=2)
    got: list[tuple[int, float]] = []
    with share.claim() as wide:
        assert wide == 2
        asked = time.monotonic()
        waiting = _claim_in_thread(share, got)
        waiting.join(timeout=5)
        assert [threads for threads, _ in got] == [1]  # one thread beside the hung batch
        assert got[0][1] - asked >= 0.09  # after waiting its while
    with share.claim() as after:
        assert after == 2  # nothing was left held


def test_a_cgroup_cpu_quota_caps_the_cores(tmp_path: Path) -> None:
    """A Kubernetes CPU limit: 2 CPUs on a node whose affinity mask shows all of its cores."""
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 2.0
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cgroup_cpu_quota(tmp_path) is None


class _WhereRun(torch.nn.Module):
    """Records the thread, torch thread count and inference mode of each forward."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(1, 3)
        self.seen: list[tuple[str, int, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(
            (threading.current_thread().name, torch.get_num_threads(), torch.is_inference_mode_enabled())
        )
        return self.head(x.mean(dim=(2, 3)))


def test_a_batch_on_several_cores_runs_on_the_one_wide_lane_and_a_shared_one_on_its_replica() -> None:
    module = _WhereRun()
    share = CoreShare(2, replicas=2)
    replica = Replica(0, "m", torch.device("cpu"), input_shape=(8, 8, 1), max_batch_size=8, threads=share)
    version = ModelVersion(
        "v", Path("unused.pt"), 0.0, 0.0, (DeviceModel(module.eval(), SPEC, torch.device("cpu")),)
    )
    try:
        alone = replica.submit(version, _jobs(2), TASK).result()
        with share.claim(work_waiting=True):  # another replica of the model is busy on one core
            shared = replica.submit(version, _jobs(2), TASK).result()
        # alone, but with images queued behind the batch: the other replica starts at once
        loaded = replica.submit(version, _jobs(2), TASK, work_waiting=True).result()
    finally:
        replica.close()
    assert len(alone.outputs) == len(shared.outputs) == len(loaded.outputs) == 2
    assert [o.indices for o in alone.outputs] == [o.indices for o in shared.outputs]
    assert [o.indices for o in alone.outputs] == [o.indices for o in loaded.outputs]
    (wide_thread, wide_threads, wide_inference), *own = module.seen
    assert wide_thread.startswith("cpu-wide") and wide_threads == 2 and wide_inference
    for own_thread, own_threads, own_inference in own:
        assert own_thread.startswith("replica-m-0") and own_threads == 1 and own_inference
    assert (alone.threads, shared.threads, loaded.threads) == (2, 1, 1)


class _Waiting(torch.nn.Module):
    """Waits without using its core (``busy=False``), or keeps it busy, for ``seconds``."""

    def __init__(self, seconds: float, busy: bool) -> None:
        super().__init__()
        self.seconds, self.busy = seconds, busy
        self.head = torch.nn.Linear(1, 3)
        self.started = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.started.set()
        if self.busy:
            keep_busy(self.seconds)
        else:
            time.sleep(self.seconds)  # the model's own work, off its core
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("busy", [False, True])
def test_a_batch_on_one_core_costs_its_cpu_time_and_a_wide_one_its_wall_time_per_thread(busy: bool) -> None:
    """Time a thread spends off its core (here asleep; under load, waiting for one) is no cost."""
    share = CoreShare(2, replicas=2)
    replica = Replica(0, "m", torch.device("cpu"), input_shape=(8, 8, 1), max_batch_size=8, threads=share)
    model = DeviceModel(_Waiting(0.05, busy).eval(), SPEC, torch.device("cpu"))
    version = ModelVersion("v", Path("unused.pt"), 0.0, 0.0, (model,))
    try:
        wide = replica.submit(version, _jobs(2), TASK).result()
        one_core = replica.submit(version, _jobs(2), TASK, work_waiting=True).result()
    finally:
        replica.close()
    assert (wide.threads, one_core.threads) == (2, 1)
    assert wide.core_seconds >= 2 * 0.05
    if busy:
        assert 0.05 <= one_core.core_seconds < 0.05 + 0.04
    else:
        assert one_core.core_seconds < 0.02


def test_a_wait_for_cores_is_no_cost_of_the_batch() -> None:
    """Timed from its start, a batch that waited out a wide one would look dearer than it is."""
    share = CoreShare(2, replicas=2)
    replica = Replica(0, "m", torch.device("cpu"), input_shape=(8, 8, 1), max_batch_size=8, threads=share)
    waiting = _Waiting(0.05, busy=False)
    model = DeviceModel(waiting.eval(), SPEC, torch.device("cpu"))
    version = ModelVersion("v", Path("unused.pt"), 0.0, 0.0, (model,))
    try:
        with share.claim() as wide:  # another replica's batch on both cores
            assert wide == 2
            waited = replica.submit(version, _jobs(2), TASK)
            time.sleep(0.3)  # the wait under test: the batch must not start, nor count it as cost
            assert not waiting.started.is_set()
        measured = waited.result()
    finally:
        replica.close()
    assert measured.threads == 2  # alone once the other ended
    assert 2 * 0.05 <= measured.core_seconds < 0.3  # the 0.3 s wait would make it 0.7


@pytest.mark.parametrize("fixed", [1, 2])
def test_a_fixed_thread_batch_leaves_shared_batches_only_the_cores_it_does_not_use(fixed: int) -> None:
    """A model with ``torch_threads`` beside a sharing one: no more threads than cores where
    it leaves one free, and never a wait (a fixed batch may run for long: a compile)."""
    replica = Replica(0, "fixed", torch.device("cpu"), input_shape=(8, 8, 1), max_batch_size=8, threads=fixed)
    waiting = _Waiting(0.5, busy=False)
    model = DeviceModel(waiting.eval(), SPEC, torch.device("cpu"))
    version = ModelVersion("v", Path("unused.pt"), 0.0, 0.0, (model,))
    try:
        running = replica.submit(version, _jobs(1), TASK)
        assert waiting.started.wait(timeout=5)
        asked = time.monotonic()
        with CoreShare(2, replicas=1).claim() as beside:
            assert beside == 1  # alone it would take both cores
        assert time.monotonic() - asked < 0.3
        running.result()
    finally:
        replica.close()
    with CoreShare(2, replicas=1).claim() as after:
        assert after == 2


def test_a_version_loads_on_one_torch_thread(tmp_path: Path) -> None:
    """Weights copied in parallel would leave the loading thread an OpenMP pool (``wide_lane``)."""
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "w.pt")
    spec = ModelSpec(
        architecture="torch.nn:Linear",
        init_args={"in_features": 4, "out_features": 2},
        checkpoint=tmp_path / "w.pt",
        input=InputSpec(size=(2, 2), channels=1),
    )
    replica = Replica(0, "m", torch.device("cpu"), input_shape=(2, 2, 1), max_batch_size=1, threads=1)
    counts: list[int] = []

    def load() -> None:
        torch.set_num_threads(2)
        version = registry_module._load_version("m", spec, spec.checkpoint, [replica], None)
        assert version is not None
        counts.append(torch.get_num_threads())

    loader = threading.Thread(target=load)
    loader.start()
    loader.join()
    replica.close()
    assert counts == [1]
