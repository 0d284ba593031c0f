"""Issue #11 (activation scaling) used as a new user would, from the README: defects found.

Each test asserts the behaviour the charter asks for (a `SteerlabError` naming what was
wrong, nothing silently ignored or reshaped, no non-finite or degenerate results passed
on). Fits are tiny (4 records, 2 steps, one layer) so the file runs in seconds.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sl = pytest.importorskip("steerlab")
pytest.importorskip("steerlab._core")


@pytest.fixture(scope="module")
def task() -> Any:
    return sl.datasets.load_task("country_capital").split()


@pytest.fixture(scope="module")
def scalars(model: Any, task: Any) -> Any:
    train, _ = task
    return sl.ActivationScalars.fit(
        model,
        train.prompts[:4],
        train.targets[:4],
        train.foils[:4],
        steps=2,
        layers=[3],
        progress=False,
    )


def _fit(model: Any, task: Any, **kw: Any) -> Any:
    train, _ = task
    args: dict[str, Any] = {"steps": 1, "layers": [3], "progress": False}
    args.update(kw)
    return sl.ActivationScalars.fit(
        model, train.prompts[:4], train.targets[:4], train.foils[:4], **args
    )


def _rewrite_meta(src: Path, dst: Path, edit: Any) -> Path:
    """Copy a saved module, editing the JSON in its 'steerlab' metadata entry."""
    raw = src.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["steerlab"])
    edit(meta)
    header["__metadata__"]["steerlab"] = json.dumps(meta)
    body = json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n :])
    return dst


# --- strength (beta) beyond what the forward can represent ------------------------------


def test_beta_beyond_f32_range_never_yields_nan_logits(model: Any, scalars: Any, task: Any) -> None:
    """`sc * 1e39` is accepted (finite as a Python float) and `model.logits` then returns
    an all-NaN row without raising (`capture` returns NaN activations, `generate` returns
    '' ); `Steering.scale(3, 1e39)` is refused ("scale alpha ... has a non-finite value
    (inf)"), so only the ActivationScalars beta path lacks the check (beta is cast to f32
    inside). Expected: the multiplication (or the forward) raises
    a SteerlabError naming beta; never non-finite logits passed on (README: "An operation
    whose result overflows f32 raises instead of passing inf on")."""
    _, test = task
    try:
        strong = scalars * 1e39
        logits = model.logits(test.prompts[:1], steering=strong)
    except sl.SteerlabError as exc:
        assert "beta" in str(exc) or "overflow" in str(exc) or "finite" in str(exc)
        return
    assert np.isfinite(logits).all(), "non-finite logits returned without an error"


def test_huge_beta_does_not_silently_zero_the_logits(model: Any, scalars: Any, task: Any) -> None:
    """With beta = 1e30 every intermediate is finite, but the next norm overflows its sum
    of squares and `model.logits` returns a row of exact zeros (a uniform distribution),
    silently; `answer_flips` then reports LD_after = 0. The same happens with a plain
    `Steering.add` of a 1e25 vector. Expected: an error (the steered activation is beyond
    what the forward can normalise) or a correctly normalised, non-degenerate result."""
    _, test = task
    try:
        logits = model.logits(test.prompts[:1], steering=scalars * 1e30)
    except sl.SteerlabError:
        return
    assert np.isfinite(logits).all()
    assert np.unique(logits).size > 1, "logits collapsed to one value (all 0) silently"


def test_beta_beyond_f32_in_a_module_file_is_refused(
    model: Any, scalars: Any, tmp_path: Path
) -> None:
    """A file whose beta is 1e39 loads without complaint (and then gives NaN logits)."""
    src = tmp_path / "m.safetensors"
    scalars.save(src)
    bad = _rewrite_meta(
        src, tmp_path / "b.safetensors", lambda m: m["hyperparameters"].update(beta=1e39)
    )
    with pytest.raises(sl.ModelFormatError, match="beta"):
        sl.ActivationScalars.load(bad, model)


def test_beta_beyond_f32_range_never_generates_silently(
    model: Any, scalars: Any, task: Any
) -> None:
    """`model.generate(..., steering=sc * 1e39)` returns [''] (NaN logits, nothing
    generated) without an error."""
    _, test = task
    with pytest.raises(sl.SteerlabError):
        model.generate(test.prompts[:1], steering=scalars * 1e39, max_new_tokens=4)


# --- fit arguments ------------------------------------------------------------------------


def test_fit_layers_as_a_bare_int(model: Any, task: Any) -> None:
    """`layers=3` raises a bare `TypeError: 'int' object is not iterable` (not a
    SteerlabError). `capture(layers=-1)` takes a bare int, so a user tries it here.
    Expected: the same as ``layers=[3]``, or an InvalidTypeError naming ``layers``."""
    try:
        sc = _fit(model, task, layers=3)
    except sl.SteerlabError as exc:
        assert isinstance(exc, sl.InvalidTypeError)
        assert "layers" in str(exc)
        return
    assert sc.to_pandas()["layer"].unique().tolist() == [3]


def test_fit_batch_size_too_big_for_an_int_raises_steerlab_error(model: Any, task: Any) -> None:
    """`batch_size=2**64` raises a bare `OverflowError: int too big to convert`."""
    with pytest.raises(sl.SteerlabError, match="batch_size"):
        _fit(model, task, batch_size=2**64)


def test_fit_repeated_positions_raise(model: Any, task: Any) -> None:
    """`positions=[-1, -1]` is accepted and silently collapsed to one position
    (n_params 2, same as [-1]), while repeated layers and repeated sites raise.
    Expected: InvalidArgumentError naming the repeated position."""
    with pytest.raises(sl.InvalidArgumentError, match="position"):
        _fit(model, task, positions=[-1, -1])


def test_positions_restriction_is_reflected_in_n_params(model: Any, task: Any) -> None:
    """Locks in: positions='last' / [-1] train one alpha per (site, layer), and n_params
    says so; the other positions stay exactly 0."""
    sc = _fit(model, task, positions="last", steps=2)
    assert sc.n_params == 2
    assert sc.n_nonzero() <= 2
    for alpha in sc.params.values():
        assert np.count_nonzero(alpha[:-1]) == 0


# --- combining ----------------------------------------------------------------------------


def test_adding_activation_scalars_raises_steerlab_error(scalars: Any) -> None:
    """`sc + sc` raises Python's bare `TypeError: unsupported operand type(s)`, while
    `Steering + sc` raises InvalidTypeError. Expected: a SteerlabError that says to use
    `sc.to_steering() + ...` (or the sum works)."""
    try:
        total = scalars + scalars
    except sl.SteerlabError as exc:
        assert "to_steering" in str(exc)
        return
    assert isinstance(total, sl.Steering | sl.ActivationScalars)


# --- module files that disagree with themselves or with the model -------------------------


def test_load_refuses_positions_that_disagree_with_the_tensors(
    model: Any, scalars: Any, tmp_path: Path
) -> None:
    """A file trained with positions='all' whose metadata is edited to positions=[-1]
    loads: n_params says 2 while n_nonzero() says 42 (> n_params), and the module applied
    is not the one whose alphas the file holds. Expected: ModelFormatError (non-zero
    parameters outside the declared positions)."""
    src = tmp_path / "m.safetensors"
    scalars.save(src)
    bad = _rewrite_meta(
        src, tmp_path / "p.safetensors", lambda m: m["hyperparameters"].update(positions=[-1])
    )
    try:
        loaded = sl.ActivationScalars.load(bad, model)
    except sl.ModelFormatError:
        return
    assert loaded.n_nonzero() <= loaded.n_params


def test_load_refuses_n_layers_that_disagree_with_the_model(
    model: Any, scalars: Any, tmp_path: Path
) -> None:
    """The file's n_layers (99) is not checked against the model (30 layers)."""
    src = tmp_path / "m.safetensors"
    scalars.save(src)
    bad = _rewrite_meta(src, tmp_path / "n.safetensors", lambda m: m.update(n_layers=99))
    with pytest.raises(sl.SteerlabError, match=r"n_layers|layers"):
        sl.ActivationScalars.load(bad, model)


@pytest.mark.parametrize("tokens", [[], "x", [100]])
def test_load_refuses_tokens_that_disagree_with_the_layout(
    model: Any, scalars: Any, tmp_path: Path, tokens: Any
) -> None:
    """A static module of layout 21 whose 'tokens' is [] / 'x' / [100] loads silently
    (to_pandas' token column then comes from garbage). Expected: ModelFormatError."""
    src = tmp_path / "m.safetensors"
    scalars.save(src)
    bad = _rewrite_meta(
        src, tmp_path / "t.safetensors", lambda m: m["hyperparameters"].update(tokens=tokens)
    )
    with pytest.raises(sl.ModelFormatError, match="tokens"):
        sl.ActivationScalars.load(bad, model)


# --- behaviour that is right and worth keeping --------------------------------------------


def test_static_module_on_another_length_names_dynscalar(model: Any, scalars: Any) -> None:
    """Locks in the README's promise: a ShapeError that names DynScalar."""
    with pytest.raises(sl.ShapeError, match="DynScalar"):
        model.logits(["The capital of France is"], steering=scalars)
