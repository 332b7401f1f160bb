"""DecodeRound: the decodes asked for in one loop step run together at its end, each request
gets its own result or error, and a request that stopped waiting has its images closed."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
from PIL import Image

from service.errors import BadImage, ServeError
from service.images.decode import Opened, open_image
from service.pipeline.decode_round import DecodeRound
from service.pipeline.tasks import Job, Wants

pytestmark = pytest.mark.anyio
WANTS = Wants(top_k=1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recorder:
    """A decoder that records what it was asked, and when: the loop step it ran in."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Any], int]] = []
        self.step = 0

    def __call__(self, images: list[Opened], wants: Wants) -> list[Job]:
        self.calls.append((images, self.step))
        if images == ["bad"]:
            raise BadImage("the image does not decode")
        return [images[0]]  # type: ignore[list-item]


async def test_decodes_asked_in_one_step_run_together_at_its_end_each_to_its_request() -> None:
    decoder, rounds = Recorder(), DecodeRound()
    futures = [rounds.decode(decoder, [name], WANTS) for name in ("a", "b", "c")]  # type: ignore[list-item]
    assert decoder.calls == []  # nothing yet: the step is not over
    decoder.step = 1
    assert await asyncio.gather(*futures) == [["a"], ["b"], ["c"]]
    assert decoder.calls == [(["a"], 1), (["b"], 1), (["c"], 1)]
    later = rounds.decode(decoder, ["d"], WANTS)  # type: ignore[list-item]
    decoder.step = 2
    assert await later == ["d"]
    assert decoder.calls[-1] == (["d"], 2)


async def test_one_bad_image_fails_only_its_own_request() -> None:
    decoder, rounds = Recorder(), DecodeRound()
    good, bad, after = (rounds.decode(decoder, [n], WANTS) for n in ("a", "bad", "c"))  # type: ignore[list-item]
    results = await asyncio.gather(good, bad, after, return_exceptions=True)
    assert results[0] == ["a"] and results[2] == ["c"]
    assert isinstance(results[1], BadImage)


async def test_a_request_that_stopped_waiting_has_its_images_closed_undecoded() -> None:
    decoder, rounds = Recorder(), DecodeRound()
    encoded = io.BytesIO()
    Image.new("RGB", (16, 16)).save(encoded, "JPEG")
    image = open_image(encoded.getvalue(), max_pixels=10**6)
    assert isinstance(image, Image.Image)
    waiting = rounds.decode(decoder, [image], WANTS)
    waiting.cancel()
    assert await rounds.decode(decoder, ["b"], WANTS) == ["b"]  # type: ignore[list-item]
    assert decoder.calls == [(["b"], 0)]
    with pytest.raises(ValueError, match="Operation on closed image"):
        image.load()


class Fatal(BaseException):
    pass


async def test_an_error_no_request_owns_still_answers_every_request_of_the_round() -> None:
    def fatal(images: list[Opened], wants: Wants) -> list[Job]:
        raise Fatal

    rounds = DecodeRound()
    first, second = rounds.decode(fatal, [], WANTS), rounds.decode(fatal, [], WANTS)
    with pytest.raises(ServeError, match="the decode round stopped before this image"):
        await asyncio.wait_for(first, timeout=5)
    with pytest.raises(ServeError):
        await asyncio.wait_for(second, timeout=5)
