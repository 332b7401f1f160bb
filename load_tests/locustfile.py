"""Locust users for model-serve: the demo models under load, every answer's content checked.

A 200 with a wrong body is a failure here: a server that answers fast but wrong (a label from
the other checkpoint, a batch out of order, a mask of the wrong size) must not pass a load test.

    locust -f load_tests/locustfile.py --host http://127.0.0.1:8000 \
        [--samples-dir models/samples] [--reload-dir DIR --reload-checkpoints a.safetensors,b.safetensors]

``load_tests/run_locust.py`` runs all of this in one command (config, server, verdict).

Users:
- ``DigitsUser``: the ``digits`` classifier; each sample's predicted label must be the digit in
  its file name (``digit_3.png``), as a raw body and as a multipart batch (answered in order).
- ``ShapesUser``: the ``shapes`` U-Net; the mask PNG must decode to the input's own size with
  class indices only, and ``class_pixel_counts`` must sum to width * height and match the mask.
- ``AdminUser`` (exactly one): hot-reloads ``digits`` back and forth between the
  ``--reload-checkpoints`` files (names under the server's ``checkpoint_root``, read locally from
  ``--reload-dir`` to know their versions) with ``MODEL_SERVE_ADMIN_TOKEN``, while the others run.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import mimetypes
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, events, task
from locust.argument_parser import LocustArgumentParser
from locust.contrib.fasthttp import ResponseContextManager
from locust.env import Environment
from locust.exception import StopUser
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV
from PIL import Image
from urllib3 import encode_multipart_formdata

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SAMPLES = REPO / "models" / "samples"
HEX12 = re.compile(r"[0-9a-f]{12}")
DIGIT_NAME = re.compile(r"digit_(\d)\.\w+")
SHAPES_CLASSES = 4  # background, circle, square, triangle
MAX_BATCH = 4  # files per multipart request: 1..MAX_BATCH


@events.init_command_line_parser.add_listener
def _add_arguments(parser: LocustArgumentParser) -> None:
    """Options of this locustfile (also settable through the LOCUST_* variables named below)."""
    parser.add_argument(
        "--samples-dir",
        default=str(DEFAULT_SAMPLES),
        env_var="LOCUST_SAMPLES_DIR",
        help="folder of digit_<k>.png and shapes_* sample images",
    )
    parser.add_argument(
        "--reload-dir",
        default="",
        env_var="LOCUST_RELOAD_DIR",
        help="local copy of the server's checkpoint_root (to compute the reload files' versions)",
    )
    parser.add_argument(
        "--reload-checkpoints",
        default="",
        env_var="LOCUST_RELOAD_CHECKPOINTS",
        help="comma-separated digits checkpoint files under checkpoint_root to alternate between",
    )
    parser.add_argument(
        "--reload-interval",
        type=float,
        default=1.0,
        env_var="LOCUST_RELOAD_INTERVAL",
        help="seconds between two reloads",
    )


_ENVIRONMENT: list[Environment] = []


@events.init.add_listener
def _remember_environment(environment: Environment, **_kwargs: Any) -> None:
    _ENVIRONMENT[:] = [environment]


@events.quit.add_listener
def _write_final_csv(**_kwargs: Any) -> None:
    """``<csv prefix>_final_{stats,failures,exceptions}.csv``: the stats at exit.

    Locust rewrites ``<prefix>_stats.csv`` once a second while running and not at exit, so it
    misses the last second (and the --stop-timeout): a late failure would not show in it.
    """
    options = _ENVIRONMENT[0].parsed_options if _ENVIRONMENT else None
    prefix = getattr(options, "csv_prefix", None)
    if not prefix:
        return
    writer = StatsCSV(_ENVIRONMENT[0], PERCENTILES_TO_REPORT)
    for kind, write in (
        ("stats", writer.requests_csv),
        ("failures", writer.failures_csv),
        ("exceptions", writer.exceptions_csv),
    ):
        with open(f"{prefix}_final_{kind}.csv", "w", newline="") as handle:
            write(csv.writer(handle))


@dataclass(frozen=True)
class Sample:
    """One sample image: its bytes, media type, pixel size and (digits only) its true label."""

    name: str
    data: bytes
    content_type: str
    size: tuple[int, int]  # (W, H)
    label: str | None


def load_samples(folder: Path) -> tuple[list[Sample], list[Sample]]:
    """(digit samples, shapes samples) from ``folder``; raises if either set is empty."""
    digits: list[Sample] = []
    shapes: list[Sample] = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        content_type = mimetypes.guess_type(path.name)[0] or ""
        if not content_type.startswith("image/"):
            continue
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
        digit = DIGIT_NAME.fullmatch(path.name)
        if digit:
            digits.append(Sample(path.name, data, content_type, size, digit.group(1)))
        elif path.name.startswith("shapes"):
            shapes.append(Sample(path.name, data, content_type, size, None))
    if not digits or not shapes:
        raise RuntimeError(
            f"{folder}: need digit_<k>.* and shapes_* sample images (found "
            f"{len(digits)} digits, {len(shapes)} shapes)"
        )
    return digits, shapes


def file_version(path: Path) -> str:
    """The server's version of a checkpoint file: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def multipart(samples: Sequence[Sample]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request with one ``file`` part per sample."""
    fields = [("file", (s.name, s.data, s.content_type)) for s in samples]
    return encode_multipart_formdata(fields)


def _body(response: ResponseContextManager) -> dict[str, Any] | None:
    """The JSON answer, or None after marking the request failed (status or body)."""
    if response.status_code != 200:
        response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
        return None
    try:
        body = json.loads(response.content or b"")
    except ValueError:
        response.failure(f"not JSON: {(response.text or '')[:200]}")
        return None
    if not isinstance(body, dict):
        response.failure(f"not a JSON object: {body!r:.200}")
        return None
    return body


def _fail_on(response: ResponseContextManager, check: Callable[..., str | None], *args: Any) -> None:
    """Marks the request failed with ``check``'s problem; an answer of the wrong shape (a check
    raising) is a failed request too, not an error in the load test."""
    try:
        problem = check(*args)
    except Exception as exc:
        problem = f"unexpected answer ({type(exc).__name__}: {exc})"
    if problem:
        response.failure(problem)


def check_envelope(body: dict[str, Any], model: str, task_name: str, count: int) -> str | None:
    """Model, task, 12-hex version and one prediction per image sent; the problem, or None."""
    if (body.get("model"), body.get("task")) != (model, task_name):
        return f"expected {model}/{task_name}, got {body.get('model')}/{body.get('task')}"
    if not isinstance(body.get("version"), str) or not HEX12.fullmatch(body["version"]):
        return f"version {body.get('version')!r} is not 12 hex digits"
    predictions = body.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != count:
        got = len(predictions) if isinstance(predictions, list) else predictions
        return f"sent {count} image(s), got {got} prediction(s)"
    return None


def check_digits(body: dict[str, Any], sent: Sequence[Sample], versions: frozenset[str]) -> str | None:
    """Envelope, known version (during reloads) and each label equal to its sample's digit, in order."""
    problem = check_envelope(body, "digits", "classification", len(sent))
    if problem:
        return problem
    if versions and body["version"] not in versions:
        return f"version {body['version']} is neither of the reload checkpoints' {sorted(versions)}"
    labels = [prediction.get("label") for prediction in body["predictions"]]
    expected = [sample.label for sample in sent]
    if labels != expected:
        return f"labels {labels} for {[s.name for s in sent]}, expected {expected}"
    for prediction in body["predictions"]:
        top = prediction.get("top_k") or []
        if not top or top[0].get("class_index") != prediction.get("class_index"):
            return f"top_k does not start with the prediction: {prediction!r:.200}"
    return None


def check_mask(png: bytes, size: tuple[int, int], counts: dict[str, int] | None) -> str | None:
    """A single-channel PNG of ``size`` with class indices only; ``counts`` (if given) match it."""
    try:
        with Image.open(io.BytesIO(png)) as image:
            image.load()
            mode, mask_size = image.mode, image.size
            histogram = image.histogram()
    except Exception as exc:  # any decoding error is the server's fault here
        return f"mask does not decode: {exc}"
    if mode != "L" or mask_size != size:
        return f"mask is {mode} {mask_size}, expected L {size}"
    if any(histogram[SHAPES_CLASSES:]):
        return f"mask has values >= {SHAPES_CLASSES}, not class indices"
    if counts is not None:
        total = sum(int(n) for n in counts.values())
        if total != size[0] * size[1]:
            return f"class_pixel_counts sum to {total}, expected {size[0]} * {size[1]}"
        from_mask = {str(i): n for i, n in enumerate(histogram[:SHAPES_CLASSES]) if n}
        if {k: int(n) for k, n in counts.items() if n} != from_mask:
            return f"class_pixel_counts {counts} differ from the mask's {from_mask}"
    return None


def check_shapes(body: dict[str, Any], sent: Sequence[Sample]) -> str | None:
    """Envelope, then per image (in order) its size, decodable mask and consistent counts."""
    problem = check_envelope(body, "shapes", "segmentation", len(sent))
    if problem:
        return problem
    for index, (prediction, sample) in enumerate(zip(body["predictions"], sent, strict=True)):
        size = (prediction.get("width"), prediction.get("height"))
        if size != sample.size:
            return f"image {index} ({sample.name}): answer is {size}, the image is {sample.size}"
        try:
            png = base64.b64decode(prediction["mask_png_base64"], validate=True)
        except (KeyError, ValueError) as exc:
            return f"image {index}: no valid mask_png_base64 ({exc})"
        problem = check_mask(png, sample.size, prediction.get("class_pixel_counts"))
        if problem:
            return f"image {index} ({sample.name}): {problem}"
    return None


def check_png_answer(version: str, png: bytes, sample: Sample) -> str | None:
    """``Accept: image/png``: the mask itself, its version in ``X-Model-Version``."""
    if not HEX12.fullmatch(version):
        return f"X-Model-Version {version!r} is not 12 hex digits"
    return check_mask(png, sample.size, None)


def check_reload(body: dict[str, Any], name: str, expected: str, before: str | None) -> str | None:
    """The reload answer names digits, the new file's version, and the version it replaced."""
    if body.get("model") != "digits":
        return f"reloaded model {body.get('model')!r}, expected 'digits'"
    if body.get("version") != expected:
        return f"{name}: version {body.get('version')!r}, expected {expected}"
    if before is not None and body.get("previous_version") != before:
        return f"previous_version {body.get('previous_version')!r}, expected {before}"
    return None


class _SampleUser(FastHttpUser):
    """Loads the samples once per user class; the checks above do the rest."""

    abstract = True
    wait_time = between(0.05, 0.25)
    _digits: list[Sample]
    _shapes: list[Sample]

    def on_start(self) -> None:
        cls = type(self)
        if not hasattr(cls, "_digits"):
            cls._digits, cls._shapes = load_samples(Path(self.environment.parsed_options.samples_dir))

    def _versions(self) -> frozenset[str]:
        """The digits versions a reload run may serve (empty: any 12-hex version goes)."""
        options = self.environment.parsed_options
        names = [n for n in options.reload_checkpoints.split(",") if n]
        if not names or not options.reload_dir:
            return frozenset()
        return frozenset(file_version(Path(options.reload_dir) / name) for name in names)

    def _check(self, response: ResponseContextManager, sent: Sequence[Sample]) -> None:
        raise NotImplementedError

    def _predict(self, model: str, sent: Sequence[Sample], *, raw: bool) -> None:
        """One image as the raw body, or the images as multipart ``file`` parts; then ``_check``."""
        if raw:
            body, content_type = sent[0].data, sent[0].content_type
        else:
            body, content_type = multipart(sent)
        label = "raw" if raw else "multipart"
        with self.client.post(
            f"/predict?model={model}",
            data=body,
            headers={"Content-Type": content_type},
            name=f"/predict {model} {label}",
            catch_response=True,
        ) as response:
            self._check(response, sent)


class DigitsUser(_SampleUser):
    """Classification: one raw image, or a multipart batch of 1..4 digit samples."""

    weight = 3
    _known: frozenset[str] | None = None

    def on_start(self) -> None:
        super().on_start()
        if DigitsUser._known is None:
            DigitsUser._known = self._versions()

    def _check(self, response: ResponseContextManager, sent: Sequence[Sample]) -> None:
        body = _body(response)
        if body is not None:
            _fail_on(response, check_digits, body, sent, DigitsUser._known or frozenset())

    @task(2)
    def raw(self) -> None:
        self._predict("digits", [random.choice(self._digits)], raw=True)

    @task(1)
    def batch(self) -> None:
        self._predict("digits", random.choices(self._digits, k=random.randint(1, MAX_BATCH)), raw=False)


class ShapesUser(_SampleUser):
    """Segmentation: raw image (JSON or ``Accept: image/png``), or a multipart batch of 1..2."""

    weight = 1

    def _check(self, response: ResponseContextManager, sent: Sequence[Sample]) -> None:
        body = _body(response)
        if body is not None:
            _fail_on(response, check_shapes, body, sent)

    @task(2)
    def raw(self) -> None:
        self._predict("shapes", [random.choice(self._shapes)], raw=True)

    @task(1)
    def raw_png(self) -> None:
        sample = random.choice(self._shapes)
        headers = {"Content-Type": sample.content_type, "Accept": "image/png"}
        with self.client.post(
            "/predict?model=shapes",
            data=sample.data,
            headers=headers,
            name="/predict shapes raw (Accept: image/png)",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            version = (response.headers or {}).get("x-model-version") or ""
            _fail_on(response, check_png_answer, version, response.content or b"", sample)

    @task(1)
    def batch(self) -> None:
        self._predict("shapes", random.choices(self._shapes, k=random.randint(1, 2)), raw=False)


class AdminUser(FastHttpUser):
    """Exactly one: reloads ``digits`` alternately from each ``--reload-checkpoints`` file."""

    fixed_count = 1

    def wait_time(self) -> float:
        """``--reload-interval`` between reloads."""
        return float(self.environment.parsed_options.reload_interval)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        token = os.environ.get("MODEL_SERVE_ADMIN_TOKEN", "")
        names = [n for n in options.reload_checkpoints.split(",") if n]
        if not token or len(names) < 2 or not options.reload_dir:
            raise StopUser()  # nothing to alternate between, or no right to: no admin traffic
        self.headers = {"Authorization": f"Bearer {token}"}
        self.files = [(name, file_version(Path(options.reload_dir) / name)) for name in names]
        self.current: str | None = None
        with self.client.get("/models/digits", name="/models/digits", catch_response=True) as response:
            body = _body(response)
            if body is not None:
                self.current = body.get("version")

    @task
    def reload(self) -> None:
        name, expected = next((f for f in self.files if f[1] != self.current), self.files[0])
        with self.client.post(
            "/models/digits/reload",
            json={"checkpoint": name},
            headers=self.headers,
            name="/models/digits/reload",
            catch_response=True,
        ) as response:
            body = _body(response)
            if body is None:
                return
            _fail_on(response, check_reload, body, name, expected, self.current)
            self.current = body.get("version")
