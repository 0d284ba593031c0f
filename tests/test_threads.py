"""One model, several Python threads: same results as sequential calls, no leaks."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

pytest.importorskip("steerlab._core")

import steerlab as sl


def _steer(model: sl.Model, seed: int) -> sl.Steering:
    v = np.random.default_rng(seed).standard_normal(model.d_model).astype(np.float32)
    return sl.Steering({12: 16.0 * v / np.linalg.norm(v)})


def _run_concurrently(jobs: list[Callable[[], Any]]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [f.result(timeout=300) for f in futures]


def test_concurrent_capture_and_generate_match_sequential(
    model: sl.Model, prompts: list[str]
) -> None:
    steer = _steer(model, 0)
    jobs: list[Callable[[], Any]] = [
        lambda: model.capture(prompts, layers=[3, 15], position="mean"),
        lambda: model.logits(prompts, steering=steer),
        lambda: model.generate(prompts, max_new_tokens=10, return_ids=True),
        lambda: model.generate(prompts, steering=steer, max_new_tokens=10, return_ids=True),
    ]
    sequential = [job() for job in jobs]
    concurrent = _run_concurrently(jobs)
    np.testing.assert_array_equal(concurrent[0], sequential[0])
    np.testing.assert_array_equal(concurrent[1], sequential[1])
    assert concurrent[2] == sequential[2]
    assert concurrent[3] == sequential[3]
    assert concurrent[2] != concurrent[3]


def test_context_steering_is_per_thread(model: sl.Model, prompts: list[str]) -> None:
    """Two threads, each inside its own `with model.steering(...)`, at the same time."""
    steers = [_steer(model, seed) for seed in (1, 2)]
    expected = [model.logits(prompts, steering=s) for s in steers]
    plain = model.logits(prompts)

    def job(i: int) -> np.ndarray:
        with model.steering(steers[i]):
            return model.logits(prompts)

    got = _run_concurrently([lambda: job(0), lambda: job(1), lambda: model.logits(prompts)])
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[2], plain)


def test_concurrent_streams(model: sl.Model, prompts: list[str]) -> None:
    expected = [model.generate(p, max_new_tokens=12) for p in prompts]
    got = _run_concurrently(
        [lambda p=p: "".join(model.generate_stream(p, max_new_tokens=12)) for p in prompts]
    )
    assert got == expected
