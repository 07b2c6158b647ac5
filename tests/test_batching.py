"""Dynamic batching of concurrent predictions (model/batching.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from model.batching import MicroBatcher
from model.predictor import Predictor
from tests.helpers import COLOURS, synthetic_image


def test_concurrent_callers_share_batches_and_get_their_own_answers(tiny_checkpoint: Path) -> None:
    predictor = Predictor.from_checkpoint(tiny_checkpoint, precision="fp32")
    batcher = MicroBatcher(predictor, max_batch=16, max_wait_ms=50)
    images = [synthetic_image(colour, seed=i) for i, colour in enumerate(COLOURS.values()) for _ in range(4)]
    expected = predictor.predict(images, top_k=3)
    results: dict[int, list] = {}
    start = threading.Barrier(len(images))

    def call(i: int) -> None:
        start.wait()
        results[i] = batcher.predict([images[i]], top_k=1 + i % 3)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == list(range(len(images)))
    for i, (prediction,) in results.items():
        assert prediction.label == expected[i].label
        assert prediction.confidence == pytest.approx(expected[i].confidence, abs=1e-5)
        assert len(prediction.top_k) == 1 + i % 3  # each caller's own top_k
    assert batcher.batches < len(images)  # some requests really shared a batch
    assert batcher.batched_requests >= 2


def test_errors_reach_the_caller_and_the_batcher_keeps_working(tiny_checkpoint: Path) -> None:
    batcher = MicroBatcher(Predictor.from_checkpoint(tiny_checkpoint), max_wait_ms=0)
    with pytest.raises(AttributeError):
        batcher.predict([object()])  # type: ignore[list-item]
    assert batcher.batches == 0  # a bad image fails in its caller's preprocessing, before the network's queue
    assert batcher.predict([synthetic_image(COLOURS["blue_tang"])])[0].label == "blue_tang"
    assert batcher.predict([]) == []
    with pytest.raises(ValueError):
        MicroBatcher(batcher.predictor, max_batch=0)
