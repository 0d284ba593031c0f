"""A new user's checks of sites, operations, monitoring and optimised vectors (issue 10).

The bugs that review found are fixed; each has a test here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

sl = pytest.importorskip("steerlab")

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hi"]
PROMPTS = ["What is your favourite colour?", "How was your weekend?", "Can you recommend a book?"]
COMPLETIONS = [
    " Ahoy matey! Blue, arr!",
    " Ahoy matey! Sailing, arr!",
    " Ahoy matey! Treasure Island, arr!",
]


def test_site_identity_all_layers(model: Any) -> None:
    layers = list(range(model.n_layers))
    post = model.capture(TEXTS, layers=layers, position="all")
    attn = model.capture(TEXTS, layers=layers, position="all", site="attn_out")
    mlp = model.capture(TEXTS, layers=layers, position="all", site="mlp_out")
    mid = model.capture(TEXTS, layers=layers, position="all", site="resid_mid")
    for p, a, f, md in zip(post, attn, mlp, mid, strict=True):
        np.testing.assert_allclose(p[1:], p[:-1] + a[1:] + f[1:], atol=1e-3)
        np.testing.assert_allclose(md[1:], p[:-1] + a[1:], atol=1e-3)
        np.testing.assert_allclose(p, md + f, atol=1e-3)


@pytest.mark.parametrize("site", ["resid_post", "resid_mid", "attn_out", "mlp_out"])
def test_project_out_clamp_scale_at_site(model: Any, site: str) -> None:
    rng = np.random.default_rng(0)
    u = rng.standard_normal(model.d_model).astype(np.float32)
    un = u / np.linalg.norm(u)
    out = model.capture(
        TEXTS,
        layers=[10],
        position="all",
        site=site,
        steering=sl.Steering.project_out(10, u, site=site),
    )
    assert max(np.abs(a[0] @ un).max() for a in out) < 1e-3
    out = model.capture(
        TEXTS,
        layers=[10],
        position="all",
        site=site,
        steering=sl.Steering.clamp(10, u, 4.0, site=site),
    )
    for a in out:
        np.testing.assert_allclose(a[0] @ un, 4.0, atol=1e-3)
    out = model.capture(
        TEXTS,
        layers=[10],
        position="all",
        site=site,
        steering=sl.Steering.scale(10, -1.0, site=site),
    )
    assert max(np.abs(a).max() for a in out) == 0.0


def test_monitored_matches_capture(model: Any) -> None:
    prompt = "Once upon a time"
    run = model.generate_monitored([prompt], layers=[10, 20], max_new_tokens=4)[0]
    assert run.activations.shape == (2, len(run.ids), model.d_model)
    for k in range(len(run.ids)):
        ref = model.capture([prompt + model.decode(run.ids[:k])], layers=[10, 20], position="last")
        np.testing.assert_allclose(ref[0], run.activations[:, k], atol=1e-4)


def test_monitored_zero_tokens_shape(model: Any) -> None:
    run = model.generate_monitored(["hi"], layers=[3], max_new_tokens=0)[0]
    assert run.activations.shape == (1, 0, model.d_model)


@pytest.mark.parametrize("positions", ["last", [-1]])
def test_optimize_positions_last_trains(model: Any, positions: Any) -> None:
    vec = sl.SteeringVector.optimize(
        model,
        PROMPTS,
        COMPLETIONS,
        layers=[12],
        positions=positions,
        steps=2,
        lr=5e-2,
        progress=False,
    )
    assert vec.history[-1]["grad_norm"] > 0


def test_embed_site_with_a_layer_refuses(model: Any) -> None:
    with pytest.raises(sl.SteerlabError):
        model.capture(["hello world"], layers=[3], site="embed")


def test_embed_layer_with_block_site_refuses(model: Any) -> None:
    with pytest.raises(sl.SteerlabError):
        model.capture(["hello world"], layers=["embed"], site="attn_out")


def test_overflowing_steering_is_reported(model: Any) -> None:
    with pytest.raises(sl.SteerlabError):
        model.capture(["hello world"], layers=[20], steering=sl.Steering.scale(3, 1e38))


def test_sum_of_steerings(model: Any) -> None:
    s = sl.Steering.add(3, np.ones(model.d_model, np.float32))
    assert len(sum([s, s]).ops) >= 1


def test_optimize_interrupt_returns_vector(model: Any) -> None:
    import os
    import signal
    import threading
    import time
    import warnings

    def kill() -> None:
        time.sleep(1.5)
        os.kill(os.getpid(), signal.SIGINT)

    # A run started in the background by a non-interactive shell inherits SIGINT ignored;
    # a user's Ctrl-C reaches a Python that raises KeyboardInterrupt.
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=kill).start()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vec = sl.SteeringVector.optimize(
                model, PROMPTS, COMPLETIONS, layers=[12], steps=5000, progress=False
            )
    finally:
        signal.signal(signal.SIGINT, old)
    assert any(issubclass(w.category, sl.TrainingInterrupted) for w in caught)
    assert 0 < len(vec.history) < 5000


def test_optimize_positions_mean_prompt_and_completion(model: Any) -> None:
    """In training the completion plays the generated tokens: "prompt" steers only the
    prompt (a different run from "all"), "generated" only the completion."""
    runs = {
        p: sl.SteeringVector.optimize(
            model, PROMPTS, COMPLETIONS, layers=[12], positions=p, steps=2, lr=5e-2, progress=False
        )
        for p in ("all", "prompt", "generated")
    }
    assert runs["prompt"].history[-1]["loss"] != runs["all"].history[-1]["loss"]
    assert runs["generated"].history[-1]["grad_norm"] > 0
    assert runs["generated"].info.training["positions"] == "generated"
