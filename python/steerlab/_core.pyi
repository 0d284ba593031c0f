"""Type stubs for steerlab's Rust extension (`steerlab._core`).

This is the contract between the Python layer and the engine. The Python layer
(`steerlab.model`) turns user input into these plain values; the extension validates
them again and raises the exceptions below.
"""

import os
from collections.abc import Sequence
from typing import Any, Literal, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "BackendError",
    "ContextLengthError",
    "Controller",
    "ControllerTrainer",
    "GenConfig",
    "Generation",
    "HyperNet",
    "HyperTrainer",
    "InvalidArgumentError",
    "Model",
    "ModelFormatError",
    "ModelNotFoundError",
    "OutOfRangeError",
    "ScalarTrainer",
    "ShapeError",
    "SteerlabError",
    "TokenizerError",
    "UnsupportedModelError",
    "VectorTrainer",
    "__version__",
    "fit_direction",
    "kernel_isa",
    "load_control_vector",
    "load_learned",
    "load_vector",
    "mean_centring",
    "pair_stats",
    "save_control_vector",
    "save_learned",
    "save_vector",
    "spearman",
    "steerability",
]

__version__: str

class SteerlabError(Exception): ...
class ModelNotFoundError(SteerlabError, FileNotFoundError): ...
class ModelFormatError(SteerlabError, ValueError): ...
class UnsupportedModelError(ModelFormatError): ...
class InvalidArgumentError(SteerlabError, ValueError): ...
class OutOfRangeError(SteerlabError, IndexError): ...
class ShapeError(SteerlabError, ValueError): ...
class ContextLengthError(SteerlabError, ValueError): ...
class TokenizerError(SteerlabError, ValueError): ...
class BackendError(SteerlabError, RuntimeError): ...

# Where an intervention applies, per row:
#   "all"        every position of the prompt and every generated token
#   "prompt"     prompt positions only (prefill)
#   "generated"  generated tokens only (decode steps)
#   "last"       the last prompt position and every generated token, i.e. each position
#                whose output predicts the next token
#   list[int]    explicit positions counted from the start of the unpadded prompt
#                (negative: from the end of the prompt); decode step k is position
#                len(prompt) + k
_Positions = Literal["all", "all_but_first", "prompt", "generated", "last"] | list[int]
# One intervention: either (layer, vector, positions): add `vector` (already scaled,
# float32 [d_model]) to the residual stream after block `layer` (negative counts from
# the end); or (site, layer, op, array, value, positions): op "add" (array = v),
# "scale" (h * (1 + alpha), array = alpha [1] or one per position), "project_out"
# (array = unit u) or "clamp" (projection on unit u set to value) at site
# "resid_post" / "resid_mid" / "attn_out" / "mlp_out" / "embed" of block `layer`; or a
# `Controller`, which steers generations only (at most one per row).
_Intervention = (
    tuple[int, npt.NDArray[np.float32], _Positions]
    | tuple[str, int, str, npt.NDArray[np.float32], float, _Positions]
    | "Controller"
)
# One list of interventions per batch row (an empty list: that row is not steered).
_RowSteering = Sequence[_Intervention]

@final
class Model:
    """A loaded model. Immutable and shareable between threads."""

    @staticmethod
    def load(path: str, dtype: str = "auto", device: str = "cpu") -> Model:
        """Load a `.gguf` file or a Hugging Face folder (config.json + safetensors +
        tokenizer.json). dtype: "auto" (GGUF stays quantized, safetensors in f32) or "f32"."""

    @property
    def n_layers(self) -> int: ...
    @property
    def d_model(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def max_context(self) -> int: ...
    @property
    def arch(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def chat_template(self) -> str | None: ...
    @property
    def bos_token(self) -> str | None: ...
    @property
    def eos_token(self) -> str | None: ...
    @property
    def eos_ids(self) -> list[int]: ...
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...
    def forward(
        self,
        batch: list[list[int]],
        layers: list[int | str],
        reduce: str | int,
        steering: Sequence[_RowSteering] | None = None,
        logits: bool = False,
        site: str = "resid_post",
    ) -> tuple[
        npt.NDArray[np.float32] | list[npt.NDArray[np.float32]] | None,
        npt.NDArray[np.float32] | None,
    ]:
        """Run one batch (left-padded internally). Returns (captures, logits).

        layers: ints (negative from the end) or "embed" for the embedding output;
        site: "resid_post", "resid_mid", "attn_out" or "mlp_out" of those layers.
        captures: None when `layers` is empty; for reduce "last" / "mean" /
        "mean_skip_first" / int an
        array [batch, len(layers), d_model]; for "all" a list with one
        [len(layers), seq_i, d_model] array per row (seq_i = that row's length).
        logits: [batch, vocab] float32 at each row's last position, or None.
        The GIL is released for the whole call."""

    def token_logprobs(
        self, batch: list[list[int]], steering: Sequence[_RowSteering] | None = None
    ) -> list[npt.NDArray[np.float32]]:
        """log p(token_j | tokens before it) for j >= 1, one array per row."""

    def generate(
        self,
        batch: list[list[int]],
        steering: Sequence[_RowSteering] | None = None,
        config: GenConfig | None = None,
    ) -> list[list[int]]:
        """Generate up to `config.max_new_tokens` per row; returns the new token ids per
        row (ending before an eos token; a row that hit a stop string ends with the token
        that completed it). The GIL is released for the whole call."""

    def generate_monitored(
        self,
        batch: list[list[int]],
        layers: list[int | str],
        site: str = "resid_post",
        steering: Sequence[_RowSteering] | None = None,
        config: GenConfig | None = None,
    ) -> tuple[list[list[int]], list[npt.NDArray[np.float32]]]:
        """`generate`, also recording at `layers` (site `site`) the activation that
        produced each new token: one [len(layers), n_new_r, d_model] array per row."""

    def generate_traced(
        self,
        batch: list[list[int]],
        steering: Sequence[_RowSteering] | None = None,
        config: GenConfig | None = None,
        forced: list[list[int]] | None = None,
        logprobs: bool = False,
        then_sample: bool = False,
    ) -> tuple[list[list[int]], list[list[float]] | None, list[list[float]] | None]:
        """`generate` with traces: (new ids, the controller gate at the position that
        predicted each new token (None without a controller), each new token's
        log-probability (None unless `logprobs`)); `forced` feeds given first tokens,
        then the row ends (or goes on sampling with `then_sample`)."""

    def forced_kl(
        self,
        batch: list[list[int]],
        forced: list[list[int]],
        steering: Sequence[_RowSteering] | None = None,
    ) -> list[npt.NDArray[np.float32]]:
        """Per row, KL(unsteered || steered) in nats at each position predicting a token
        of the forced continuation."""

    def start_generation(
        self,
        batch: list[list[int]],
        steering: Sequence[_RowSteering] | None = None,
        config: GenConfig | None = None,
        row_configs: list[GenConfig] | None = None,
    ) -> Generation:
        """Same as `generate`, one step at a time (for streaming). With `row_configs`
        (one per row, instead of `config`) each row samples with its own settings and
        seed and ends at its own limit, as it would alone."""

@final
class GenConfig:
    """Generation settings, checked when made: max_new_tokens >= 0, temperature finite
    and >= 0 (0 = greedy), top_k >= 1, top_p in (0, 1], stop strings non-empty."""

    def __new__(
        cls,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
        ignore_eos: bool = False,
    ) -> GenConfig: ...
    @property
    def max_new_tokens(self) -> int: ...

@final
class Generation:
    def step(self) -> list[int | None] | None:
        """Run one decode step: the new token of each row (None for rows already
        finished), or None when every row has finished."""
    def finish(self, row: int) -> None:
        """End one row now (its client went away); the others go on unchanged."""

@final
class VectorTrainer:
    """A run of optimised steering vectors (see `steerlab.optimize`): one additive
    vector per layer at resid_post, AdamW, frozen prefix. Examples are (ids, split):
    prompt ids then completion ids, the completion starting at `split`."""

    def __new__(
        cls,
        model: Model,
        examples_: list[tuple[list[int], int]],
        layers: list[int],
        *,
        negatives: list[tuple[list[int], int]] | None = None,
        positions: _Positions | None = None,
        lr: float = 0.01,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = ...,  # 1.0
        batch_size: int = 8,
        seed: int = 0,
        init: list[list[float]] | None = None,
    ) -> VectorTrainer: ...
    def step(self) -> dict[str, float]:
        """One optimiser step (GIL released; Ctrl-C stops it): its record."""
    @property
    def history(self) -> list[dict[str, float]]: ...
    @property
    def best(self) -> tuple[int, float] | None: ...
    def vectors(self, best: bool = True) -> list[tuple[int, npt.NDArray[np.float32]]]: ...

@final
class ScalarTrainer:
    """An activation-scaling run (see `steerlab.scalars`): ActivScalar ('scalar'),
    SteerVec ('vector') or DynScalar ('dynamic') at (site, layer) pairs; records are
    (prompt ids, target id, foil id)."""

    def __new__(
        cls,
        model: Model,
        records: list[tuple[list[int], int, int]],
        sites: list[tuple[str, int]],
        kind: str,
        *,
        positions: _Positions | None = None,
        effectiveness: float = 1.0,
        faithfulness: float = 1.0,
        sparsity: float = 0.001,
        lr: float = 0.01,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = None,
        batch_size: int = 16,
        seed: int = 0,
    ) -> ScalarTrainer: ...
    def step(self) -> dict[str, float]:
        """One optimiser step (GIL released; Ctrl-C stops it): its record."""
    @property
    def history(self) -> list[dict[str, float]]: ...
    @property
    def best(self) -> tuple[int, float] | None: ...
    @property
    def layout(self) -> int | None: ...
    def params(self, best: bool = True) -> list[tuple[str, int, list[npt.NDArray[np.float32]]]]: ...

@final
class Controller:
    """A steering controller checked against one model (see `steerlab.controller`)."""

    def __new__(
        cls,
        read_layers: list[int],
        layers: list[int],
        hidden: int,
        mean: npt.NDArray[np.float32],
        scale: npt.NDArray[np.float32],
        w1: npt.NDArray[np.float32],
        b1: npt.NDArray[np.float32],
        w2: npt.NDArray[np.float32],
        b2: npt.NDArray[np.float32],
        directions: npt.NDArray[np.float32],
        strength: float,
        *,
        d_model: int,
        n_layers: int,
    ) -> Controller: ...
    def outputs(self, states: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """sigma(outputs) [n, 1 + L] for raw read states [n, k*d]: gate, then weights."""
    def params(self) -> dict[str, Any]: ...
    @property
    def read_layers(self) -> list[int]: ...
    @property
    def layers(self) -> list[int]: ...
    @property
    def hidden(self) -> int: ...
    @property
    def strength(self) -> float: ...

_Stage2Example = tuple[list[int], int, npt.NDArray[np.float32]]

@final
class ControllerTrainer:
    """A controller training run: stage 1 (gate, on cached states) by epochs, stage 2
    (end to end through the model) by steps."""

    def __new__(
        cls,
        model: Model,
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.float32],
        xv: npt.NDArray[np.float32],
        yv: npt.NDArray[np.float32],
        read_layers: list[int],
        layers: list[int],
        directions: npt.NDArray[np.float32],
        *,
        hidden: int = 1024,
        strength: float = 4.0,
        weight_reg: float = 0.01,
        lr: float = 5e-5,
        weight_decay: float = 0.01,
        max_grad_norm: float | None = ...,  # 1.0
        batch_size: int = 8,
        seed: int = 0,
    ) -> ControllerTrainer: ...
    def epoch(self) -> dict[str, float]: ...
    def restore_best(self) -> None: ...
    def start_stage2(
        self,
        harmful: list[_Stage2Example],
        benign: list[_Stage2Example],
        val_harmful: list[_Stage2Example],
        val_benign: list[_Stage2Example],
        *,
        kl_weight: float = 1.0,
        lr: float = 5e-5,
        weight_decay: float = 0.01,
        max_grad_norm: float | None = ...,  # 1.0
    ) -> None: ...
    def stage2_step(self) -> dict[str, float]: ...
    def stage2_validate(self) -> dict[str, float]: ...
    def keep(self) -> None: ...
    def restore_kept(self) -> None: ...
    def params(self) -> dict[str, Any]: ...

_RawTensor = tuple[str, list[int], npt.NDArray[np.float32]]
_HyperExample = tuple[list[int], list[int], int]

@final
class HyperNet:
    """A HyperSteer hypernetwork (copied base blocks, cross-attention, head)."""

    def __new__(
        cls,
        model: Model,
        variant: str,
        layer: int,
        n_blocks: int,
        params: list[_RawTensor] | None = None,
        pool: str = "last",
    ) -> HyperNet: ...
    def vectors(
        self, steer: list[list[int]], base: list[list[int]] | None = None
    ) -> npt.NDArray[np.float32]: ...
    def params(self) -> dict[str, npt.NDArray[np.float32]]: ...
    @property
    def variant(self) -> str: ...
    @property
    def layer(self) -> int: ...
    @property
    def pool(self) -> str: ...
    @property
    def n_blocks(self) -> int: ...
    @property
    def n_params(self) -> int: ...

@final
class HyperTrainer:
    """A HyperSteer training run, stepped from Python."""

    def __new__(
        cls,
        model: Model,
        examples_: list[_HyperExample],
        validation: list[_HyperExample],
        variant: str,
        layer: int,
        n_blocks: int,
        *,
        lr: float,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = ...,  # 1.0
        batch_size: int = 8,
        seed: int = 0,
        pool: str = "last",
    ) -> HyperTrainer: ...
    def step(self) -> dict[str, float]: ...
    def validate(self) -> float | None: ...
    @property
    def history(self) -> list[dict[str, float]]: ...
    @property
    def steps_per_epoch(self) -> int: ...
    @property
    def n_params(self) -> int: ...
    def params(self) -> dict[str, npt.NDArray[np.float32]]: ...
    def set_params(self, params: list[_RawTensor]) -> None: ...
    def set_step_offset(self, steps: int) -> None: ...
    def set_lr(self, lr: float) -> None: ...

def save_learned(
    path: str | os.PathLike[str],
    meta_json: str,
    tensors: list[tuple[str, list[int], npt.NDArray[np.float32]]],
) -> None:
    """Write a learned module (safetensors + the checked metadata JSON)."""

def load_learned(
    path: str | os.PathLike[str], fingerprint: str | None = None, d_model: int = 0
) -> tuple[str, list[tuple[str, list[int], npt.NDArray[np.float32]]]]:
    """Read a learned module (refusing another model when a fingerprint is given)."""

# -- steering-vector maths (numpy in, numpy out; the GIL is released) -----------------

_F32 = npt.NDArray[np.float32]
_F64 = npt.NDArray[np.float64]

def fit_direction(pos: _F32, neg: _F32, method: str) -> tuple[_F32, float | None]:
    """Direction from paired activations [n, d]; method: mean_diff, pca_diff, pca_center,
    logistic. Returns (direction [d], PCA explained share / probe accuracy / None)."""

def mean_centring(target: _F32, background: _F32) -> _F32:
    """mean(target) - mean(background)."""

def pair_stats(pos: _F32, neg: _F32) -> dict[str, float | _F64]:
    """mean_cosine, d_prime, diff_norm, mean_norm (floats); cosines, proj_pos, proj_neg."""

def steerability(margins: _F64, multipliers: list[float]) -> dict[str, float | _F64]:
    """mean_effect, mean_slope, anti_steerable (floats); unsteered, effect, slope."""

def spearman(x: list[float], y: list[float]) -> float: ...
def save_vector(path: str, directions: dict[int, _F32], metadata: str) -> None: ...
def load_vector(path: str) -> tuple[dict[int, _F32], str]: ...
def save_control_vector(path: str, directions: dict[int, _F32], model_hint: str) -> None: ...
def load_control_vector(path: str) -> tuple[dict[int, _F32], str | None, int | None]: ...
def kernel_isa() -> str:
    """The instruction set the quantized kernels use here: "avx512", "avx2" or "scalar"
    (the CPU's best, capped by STEERLAB_ISA)."""
