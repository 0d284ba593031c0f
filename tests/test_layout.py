"""Package layout: no import loops, the renamed catalogue and its alias, plots that take
plain data, and the pieces split out of model.py checked on their own."""

from __future__ import annotations

import ast
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sl = pytest.importorskip("steerlab")
pytest.importorskip("steerlab._core")

from steerlab import _batches, _sampling, catalog, models  # noqa: E402

PACKAGE = Path(sl.__file__).parent


def _imports(path: Path) -> set[str]:
    """Sibling modules `path` imports, at any level (module, function, TYPE_CHECKING)."""
    names = {p.stem for p in PACKAGE.glob("*.py")}
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "steerlab":
                out.update(a.name for a in node.names)
            elif node.module.startswith("steerlab."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("steerlab."))
    return {m for m in out if m in names and m != path.stem}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*path[path.index(n) :], n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_package_imports_form_no_loop() -> None:
    # Imports inside functions or under TYPE_CHECKING count too: a loop dodged that way
    # is still a loop (it was evaluate -> diagnostics -> plots -> evaluate).
    graph = {p.stem: _imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert _cycle(graph) is None, f"import loop: {' -> '.join(_cycle(graph) or [])}"
    # leaves: plots raise SteerlabErrors (a missing matplotlib: _extras' MissingExtraError)
    assert graph["plots"] == {"_extras", "_stats", "errors"}
    assert graph["_extras"] == {"errors"}
    assert {"evaluate", "_generations"}.isdisjoint(graph["diagnostics"])


def test_cycle_finder_finds_a_loop() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_models_is_an_alias_of_catalog() -> None:
    assert sl.catalog is catalog
    assert sl.models is models
    assert models.__all__ == catalog.__all__
    for name in catalog.__all__:
        assert getattr(models, name) is getattr(catalog, name), name
    assert catalog.DEFAULT_MODEL_ENV == "STEERLAB_DEFAULT_MODEL"


def test_public_names_kept() -> None:
    from steerlab.evaluate import GenerationReport, spearman, steered_generations
    from steerlab.model import _check_position, _reload

    assert GenerationReport is sl.evaluate.GenerationReport
    assert steered_generations is sl.evaluate.steered_generations
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert _check_position("mean") == "mean"
    assert _reload.__module__ == "steerlab.model"


def test_model_pickles_through_reload(tiny_llama_dir: Path) -> None:
    model = sl.Model.load(tiny_llama_dir, dtype="f32")
    again = pickle.loads(pickle.dumps(model))
    assert again.fingerprint == model.fingerprint
    assert again.dtype == "f32"
    assert b"steerlab.model" in pickle.dumps(model) and b"_reload" in pickle.dumps(model)


# ------------------------------------------------------------- pieces split from model.py


def test_cut_at_stop() -> None:
    assert _sampling.cut_at_stop("abc STOP def END", ["END", "STOP"]) == ("abc ", True)
    assert _sampling.cut_at_stop("abc", ["x"]) == ("abc", False)
    assert _sampling.cut_at_stop("abc", None) == ("abc", False)


def test_partial_stop() -> None:
    assert _sampling.partial_stop("hello ST", ["STOP"]) == 2
    assert _sampling.partial_stop("hello STO", ["STOP", "O"]) == 3
    assert _sampling.partial_stop("hello", ["STOP"]) == 0
    assert _sampling.partial_stop("x", None) == 0


def test_sampling_seed_offset_wraps() -> None:
    s = _sampling.Sampling(4, 0.5, None, None, 2**64 - 1, "END")
    assert s.seed == 2**64 - 1 and s.stop == ["END"]
    assert "seed: Some(1)" in repr(s.config(seed_offset=2))
    with pytest.raises(sl.InvalidArgumentError, match=r"a stop string is empty \(stop\[1\]\)"):
        _sampling.Sampling(4, 0.0, None, None, None, ["a", ""])


def test_batches_spans_and_error_numbering() -> None:
    with _batches.Batches(5, 2, False, "x", "y") as batches:
        assert list(batches) == [(0, 2), (2, 4), (4, 5)]
    with (
        pytest.raises(
            sl.OutOfRangeError,
            match=r"^in the batch of inputs 2\.\.3 \(its row r is input 2 \+ r\): bad row 1$",
        ),
        _batches.batch_errors(2, 4, 5),
    ):
        raise sl.OutOfRangeError("bad row 1")
    with pytest.raises(sl.OutOfRangeError, match=r"^bad row 1$"), _batches.batch_errors(0, 5, 5):
        raise sl.OutOfRangeError("bad row 1")


# ---------------------------------------------------------------- plots take plain data


@dataclass
class _Layer:
    cosines: Any = field(default_factory=lambda: np.array([0.2, 0.5, 0.9]))
    proj_pos: Any = field(default_factory=lambda: np.array([0.8, 1.1, 1.2]))
    proj_neg: Any = field(default_factory=lambda: np.array([-0.9, -1.1, -0.7]))
    d_prime: float = 3.0

    @property
    def mean_cosine(self) -> float:
        return float(self.cosines.mean())


@dataclass
class _Pairs:
    name: str | None = "plain"


@dataclass
class _Diagnosis:
    recommended_layer: int = 1
    pairs: _Pairs = field(default_factory=_Pairs)

    def records(self) -> list[dict[str, Any]]:
        return [{"layer": i, "mean_cosine": 0.1 * i, "d_prime": float(i)} for i in range(3)]

    def __getitem__(self, layer: int) -> _Layer:
        return _Layer()


@dataclass
class _PromptTypes:
    layer: int = 2
    prompt_types: tuple[str, ...] = ("a", "b")
    cosines: Any = field(default_factory=lambda: np.array([[1.0, 0.3], [0.3, 1.0]]))

    def records(self) -> list[dict[str, Any]]:
        return [
            {"mean_effect": 0.5, "anti_steerable": 0.1},
            {"mean_effect": -0.2, "anti_steerable": 0.6},
        ]


@pytest.fixture
def agg() -> Any:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def test_plots_take_plain_data(agg: Any) -> None:
    from matplotlib.figure import Figure

    margins = np.array([[-1.0, 0.0, 1.0], [1.0, 0.0, -1.0]])
    steer = sl.evaluate.SteerabilityResult(
        multipliers=(-1.0, 0.0, 1.0),
        margins=margins,
        unsteered=margins[:, 1],
        effect=margins[:, 2] - margins[:, 1],
        slope=np.array([1.0, -1.0]),
        mean_effect=0.0,
        mean_slope=0.0,
        anti_steerable=0.5,
        name="plain",
    )
    gen = sl.evaluate.GenerationReport(
        prompts=["p"],
        conditions=["none", "on"],
        texts={"none": ["x"], "on": ["y"]},
        on_topic={"none": [False], "on": [True]},
        perplexity={"none": np.array([3.0]), "on": np.array([5.0])},
        topic="space",
    )
    figs = [
        sl.plots.plot_diagnosis(_Diagnosis()),
        sl.plots.plot_layer_sweep(_Diagnosis()),
        sl.plots.plot_prompt_types(_PromptTypes()),
        sl.plots.plot_steerability(steer),
        steer.plot(),
        sl.plots.plot_generation_report(gen),
        gen.plot(),
    ]
    assert all(isinstance(f, Figure) for f in figs)
    assert figs[0].axes[2].get_title() == "separability, layer 1: d' = 3.00"
    assert [a.get_ylabel() for a in figs[-1].axes] == [
        "on topic (space)",
        "median perplexity (unsteered model)",
    ]


# ------------------------------------------- pieces split from vectors.py and templates.py


def test_names_kept_after_the_vectors_and_templates_splits() -> None:
    from steerlab import _template_budget, _vector_fit, _vector_meta, templates, vectors

    assert vectors.VectorInfo is _vector_meta.VectorInfo
    assert vectors.METHODS == ("mean_diff", "pca_diff", "pca_center", "logistic")
    for name in ("capture_pairs", "residual_norms", "_layer_list"):
        assert getattr(vectors, name) is getattr(_vector_fit, name), name
    assert vectors._now is _vector_meta._now
    assert vectors._restore.__module__ == "steerlab.vectors"
    assert templates.render_chat.__module__ == "steerlab.templates"
    for name in templates.__all__[:-1]:
        assert getattr(templates, name) == getattr(_template_budget, name), name
    assert templates.__all__[-1] == "render_chat"
    assert callable(templates._raise_exception) and callable(templates._tojson)


def test_vector_pickles_written_before_the_split_load() -> None:
    from steerlab.vectors import VectorInfo

    info = VectorInfo(d_model=4, fingerprint="abc", residual_norms={0: 1.5})
    vec = sl.SteeringVector({0: np.arange(4, dtype=np.float32)}, info, positions="prompt")
    data = pickle.dumps(vec, protocol=2)
    assert b"csteerlab.vectors\n_restore\n" in data
    # Before the split, VectorInfo lived in steerlab.vectors and pickles name it there.
    old = data.replace(b"csteerlab._vector_meta\nVectorInfo\n", b"csteerlab.vectors\nVectorInfo\n")
    assert old != data and b"_vector_meta" not in old
    again = pickle.loads(old)
    assert again == vec and again.info == info and again.positions == "prompt"
    assert type(again.info) is VectorInfo
