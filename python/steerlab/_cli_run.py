"""The commands of the `steerlab` command line (`steerlab.cli` parses the arguments and
maps errors to exit codes; this module does the work).

Each ``cmd_*`` function takes the parsed arguments and returns an exit code. Slow work
(loading the model) happens only in the commands that need it, after every check that
can fail without it (output folders, input files, argument combinations). Outputs are
written atomically (`steerlab._cli_io.atomic_path`).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import operator
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from steerlab._cli_io import (
    CliError,
    check_output,
    parse_layers,
    parse_path_coef,
    read_jsonl,
    read_texts,
    text_field,
    write_atomic,
    write_text_atomic,
)

if TYPE_CHECKING:
    from steerlab.contrast import ContrastPairs
    from steerlab.model import Model

__all__ = ["run"]

T = TypeVar("T")

#: The ``--chat`` choices of the learned modules -> their ``chat=`` argument.
_CHAT = {"auto": "auto", "yes": True, "no": False}


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the command `args` names; returns its exit code.

    Raises:
        SteerlabError, CliError, OSError: a bad input (exit code 1).
        KeyboardInterrupt: Ctrl-C (exit code 130).
    """
    from steerlab import set_progress

    set_progress(False if args.quiet else None)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "capture": cmd_capture,
        "train": cmd_train,
        "diagnose": cmd_diagnose,
        "generate": cmd_generate,
        "export": cmd_export,
        "serve": cmd_serve,
    }
    return commands[args.command](args)


# ------------------------------------------------------------------ helpers


def _note(args: argparse.Namespace, message: str) -> None:
    """A one-line report on stderr (unless --quiet)."""
    if not args.quiet:
        print(message, file=sys.stderr)


def _usage(args: argparse.Namespace, message: str) -> None:
    """A usage error of the running command: argparse prints it and exits with 2."""
    parser: argparse.ArgumentParser = args._parser
    parser.error(message)


def _load_model(args: argparse.Namespace) -> Model:
    from steerlab.model import Model

    return Model.load(args.model, dtype=args.dtype, device=args.device)


def _position(value: str | None) -> str | int | None:
    """A read position: a name (checked by steerlab) or a token index."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def _positive(value: int | None, option: str) -> None:
    if value is not None and value < 1:
        raise CliError(f"{option} must be at least 1, got {value}")


def _limit(items: list[T], limit: int | None) -> list[T]:
    _positive(limit, "--limit")
    return items if limit is None else items[:limit]


def _all_layers(model: Model, spec: str | None) -> list[int]:
    layers = parse_layers(spec)
    return list(range(model.n_layers)) if layers is None else layers


def _finite(obj: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _chat_prompts(model: Model, prompts: list[str]) -> list[str]:
    return [model.chat_prompt([{"role": "user", "content": p}]) for p in prompts]


# ------------------------------------------------------------------ contrast pairs

_PAIR_FORMS = (
    ("question", "matching", "not_matching"),
    ("prompt", "positive", "negative"),
    ("positive", "negative"),
)


def _pairs(args: argparse.Namespace, model: Model) -> ContrastPairs:
    """The contrast pairs of ``--pairs`` / ``--dataset`` (see `steerlab.cli`)."""
    from steerlab import datasets
    from steerlab.contrast import ContrastPairs

    _positive(args.limit, "--limit")
    chat_model = model if args.chat else None
    if args.dataset is not None:
        name = args.dataset.strip().lower().replace("-", "_")
        behaviours = datasets.behaviour_names()
        if name == "sentiment":
            pairs = ContrastPairs.from_texts(datasets.sentiment_pairs(), name="sentiment")
        elif name in behaviours:
            pairs = ContrastPairs.from_records(
                datasets.load_behaviour(name),
                prompt_type=args.prompt_type,
                model=chat_model,
                seed=args.seed,
            )
        else:
            raise CliError(
                f"unknown dataset {args.dataset!r}; available: sentiment, {', '.join(behaviours)}"
            )
    else:
        records = read_jsonl(args.pairs, "pairs")
        first_where, first = records[0]
        form = next((f for f in _PAIR_FORMS if all(k in first for k in f)), None)
        if form is None:
            raise CliError(
                f"{first_where}: a pair needs the fields positive/negative, prompt/positive/"
                f"negative or question/matching/not_matching; the record has "
                f"{', '.join(map(repr, first)) or 'none'}"
            )
        rows = [tuple(text_field(obj, k, where) for k in form) for where, obj in records]
        label = Path(args.pairs).stem
        if form[0] == "question":
            pairs = ContrastPairs.from_records(
                rows, prompt_type=args.prompt_type, model=chat_model, seed=args.seed, name=label
            )
        elif form[0] == "prompt":
            pairs = ContrastPairs.from_completions(rows, name=label, model=chat_model)  # type: ignore[arg-type]
        else:
            pairs = ContrastPairs.from_texts(rows, name=label)  # type: ignore[arg-type]
    if args.limit is not None:
        pairs = pairs[: args.limit]
    return pairs


# ------------------------------------------------------------------ capture


def cmd_capture(args: argparse.Namespace) -> int:
    """``steerlab capture``: activations of texts -> .npy / .npz."""
    out = args.output
    suffix = Path(out).suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise CliError(f"--output {out!r}: expected a .npy or .npz file")
    position = _position(args.position)
    if position == "all" and suffix != ".npz":
        raise CliError(
            "--position all gives one array per text (their lengths differ); write a .npz file"
        )
    check_output(out)
    texts = read_texts(args.texts, args.field)
    _positive(args.batch_size, "--batch-size")
    model = _load_model(args)
    layers = _all_layers(model, args.layers)
    acts = model.capture(texts, layers, position, args.batch_size, site=args.site)  # type: ignore[arg-type]
    resolved = np.asarray([model._resolve_layer(x) for x in layers], dtype=np.int64)

    def write(tmp: str) -> None:
        if isinstance(acts, list):
            arrays = {f"text_{i}": a for i, a in enumerate(acts)}
            n_tokens = np.asarray([a.shape[1] for a in acts], dtype=np.int64)
            np.savez(tmp, layers=resolved, n_tokens=n_tokens, **arrays)
        elif suffix == ".npz":
            np.savez(tmp, activations=acts, layers=resolved)
        else:
            np.save(tmp, acts)

    write_atomic(out, write)
    if isinstance(acts, list):
        shape = f"{len(acts)} arrays [{len(layers)}, n_tokens, {model.d_model}]"
    else:
        shape = f"[{', '.join(map(str, acts.shape))}]"
    _note(args, f"wrote {out}: float32 {shape} (layers {resolved.tolist()}, {args.site})")
    return 0


# ------------------------------------------------------------------ train


def cmd_train(args: argparse.Namespace) -> int:
    """``steerlab train KIND``."""
    check_output(args.output)
    if Path(args.output).suffix.lower() != ".safetensors":
        # Every trained artifact is saved as safetensors whatever the name: a .npy or .gguf
        # name would hold bytes its readers cannot parse.
        raise CliError(
            f"--output {args.output!r}: a trained {args.kind} is saved as safetensors; "
            f"name the file .safetensors (convert a vector with 'steerlab export')"
        )
    kinds: dict[str, Callable[[argparse.Namespace], int]] = {
        "vector": _train_vector,
        "mean-centring": _train_centring,
        "optimize": _train_optimize,
        "scalars": _train_scalars,
        "controller": _train_controller,
        "hypersteer": _train_hypersteer,
    }
    return kinds[args.kind](args)


def _save(args: argparse.Namespace, artifact: Any, summary: str) -> None:
    write_atomic(args.output, artifact.save)
    _note(args, f"saved {args.output}: {summary}")


def _train_vector(args: argparse.Namespace) -> int:
    from steerlab.vectors import SteeringVector

    _positive(args.batch_size, "--batch-size")
    model = _load_model(args)
    pairs = _pairs(args, model)
    layers = _all_layers(model, args.layers)
    vec = SteeringVector.train(
        model, pairs, layers, args.method, _position(args.position), batch_size=args.batch_size
    )
    _save(args, vec, f"{args.method} vector, layers {vec.layers}, {len(pairs)} pairs")
    return 0


def _train_centring(args: argparse.Namespace) -> int:
    from steerlab import datasets
    from steerlab.vectors import SteeringVector

    _positive(args.batch_size, "--batch-size")
    if args.target is not None:
        targets = read_texts(args.target, args.field, "target texts")
    else:
        targets = list(datasets.load_topic(args.topic).texts)
    background = (
        None if args.background is None else read_texts(args.background, args.field, "background")
    )
    model = _load_model(args)
    layers = _all_layers(model, args.layers)
    vec = SteeringVector.mean_centring(
        model,
        targets,
        background,
        layers,
        _position(args.position),  # type: ignore[arg-type]
        batch_size=args.batch_size,
    )
    _save(args, vec, f"mean-centring vector, layers {vec.layers}, {len(targets)} target texts")
    return 0


def _interruptible(args: argparse.Namespace, fit: Callable[[], T]) -> tuple[T, bool]:
    """Run a training call; returns (result, whether Ctrl-C stopped it early). Other
    warnings are shown as usual."""
    from steerlab.optimize import TrainingInterrupted

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit()
    interrupted = False
    for w in caught:
        if issubclass(w.category, TrainingInterrupted):
            interrupted = True
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return result, interrupted


def _finish_training(args: argparse.Namespace, result: Any, interrupted: bool, what: str) -> int:
    if not interrupted:
        _save(args, result, what)
        return 0
    prefix = f"steerlab train {args.kind}"
    if args.save_interrupted:
        write_atomic(args.output, result.save)
        print(
            f"{prefix}: interrupted; saved what the completed steps give to {args.output}",
            file=sys.stderr,
        )
    else:
        print(
            f"{prefix}: interrupted; nothing written (--save-interrupted keeps the completed "
            f"steps)",
            file=sys.stderr,
        )
    return 130


def _train_optimize(args: argparse.Namespace) -> int:
    from steerlab import datasets
    from steerlab.vectors import SteeringVector

    negatives: list[str] | None
    if args.data is not None:
        rows = _limit(read_jsonl(args.data, "data"), args.limit)
        prompts = [text_field(o, "prompt", w) for w, o in rows]
        completions = [text_field(o, "completion", w) for w, o in rows]
        negatives = [text_field(o, "negative", w) for w, o in rows] if args.negatives else None
    else:
        style = datasets.load_style(args.style, args.split)
        prompts = _limit(list(style.prompts), args.limit)
        completions = list(style.completions)[: len(prompts)]
        negatives = list(style.negatives)[: len(prompts)] if args.negatives else None
    model = _load_model(args)
    if args.chat:
        prompts = _chat_prompts(model, prompts)
    layers = _all_layers(model, args.layers)
    vec, interrupted = _interruptible(
        args,
        lambda: SteeringVector.optimize(
            model,
            prompts,
            completions,
            layers=layers,
            negatives=negatives,
            steps=args.steps,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            keep=args.keep,
        ),
    )
    loss = vec.history[-1]["loss"] if vec.history else float("nan")
    what = f"optimized vector, layers {vec.layers}, {len(vec.history)} steps, last loss {loss:.4g}"
    return _finish_training(args, vec, interrupted, what)


def _train_scalars(args: argparse.Namespace) -> int:
    from steerlab import datasets
    from steerlab.scalars import ActivationScalars

    if args.data is not None:
        rows = _limit(read_jsonl(args.data, "data"), args.limit)
        prompts = [text_field(o, "prompt", w) for w, o in rows]
        targets = [text_field(o, "target", w) for w, o in rows]
        foils = [text_field(o, "foil", w) for w, o in rows]
    else:
        task = datasets.load_task(args.task, args.split, lengths=args.lengths)
        records = _limit(list(task.records), args.limit)
        prompts = [r.prompt for r in records]
        targets = [r.target for r in records]
        foils = [r.foil for r in records]
    sites = [s.strip() for s in args.sites.split(",") if s.strip()]
    layers = parse_layers(args.layers)
    model = _load_model(args)
    sc, interrupted = _interruptible(
        args,
        lambda: ActivationScalars.fit(
            model,
            prompts,
            targets,
            foils,
            kind=args.scalar_kind,
            sites=sites,
            layers=layers,
            effectiveness=args.effectiveness,
            faithfulness=args.faithfulness,
            sparsity=args.sparsity,
            steps=args.steps,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            keep=args.keep,
        ),
    )
    loss = sc.history[-1]["loss"] if sc.history else float("nan")
    what = (
        f"{args.scalar_kind} activation scalars at {len(sc.sites)} sites, "
        f"{len(sc.history)} steps, last loss {loss:.4g}"
    )
    return _finish_training(args, sc, interrupted, what)


def _train_controller(args: argparse.Namespace) -> int:
    from steerlab import datasets
    from steerlab.controller import SteeringController
    from steerlab.vectors import SteeringVector

    if (args.harmful is None) != (args.benign is None):
        _usage(args, "--harmful and --benign go together (or neither: the shipped requests)")
    if args.harmful is not None:
        harmful = read_texts(args.harmful, "text", "harmful requests")
        benign = read_texts(args.benign, "text", "benign requests")
    else:
        requests = datasets.load_requests("train")
        harmful, benign = requests.harmful, requests.benign
    harmful, benign = _limit(harmful, args.limit), _limit(benign, args.limit)
    layers = parse_layers(args.layers)
    model = _load_model(args)
    direction = None if args.direction is None else SteeringVector.load(args.direction, model)
    ctrl, interrupted = _interruptible(
        args,
        lambda: SteeringController.fit(
            model,
            harmful,
            benign,
            direction=direction,
            layers=layers,
            read_layers=args.read_layers,
            hidden=args.hidden,
            strength=args.strength,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            stage2_steps=args.stage2_steps,
            seed=args.seed,
            validation=args.validation,
            chat=_CHAT[args.chat],
        ),
    )
    val = [h["val_acc"] for h in ctrl.history if "val_acc" in h]
    what = (
        f"steering controller, steered layers {ctrl.layers[0]}..{ctrl.layers[-1]}, "
        f"{len(harmful)} harmful / {len(benign)} benign requests"
        + (f", best validation accuracy {max(val):.3f}" if val else "")
    )
    return _finish_training(args, ctrl, interrupted, what)


def _train_hypersteer(args: argparse.Namespace) -> int:
    from steerlab import datasets
    from steerlab.hypersteer import HyperSteer

    targets: list[str] | None = None
    if args.data is not None:
        rows = read_jsonl(args.data, "data")
        steer = [text_field(o, "instruction", w) for w, o in rows]
        base = [text_field(o, "prompt", w) for w, o in rows]
        with_target = [w for w, o in rows if "target" in o]
        if with_target:
            if len(with_target) != len(rows):
                raise CliError(
                    f"{args.data}: {len(with_target)} of {len(rows)} records have a 'target'; "
                    f"give it in all or none (the model writes missing ones)"
                )
            targets = [text_field(o, "target", w) for w, o in rows]
    else:
        _positive(args.n_pairs, "--n-pairs")
        data = datasets.load_steering_prompts("held_in", "train")
        steer, base = data.pairs(args.n_pairs, seed=args.seed)
    model = _load_model(args)
    hs, interrupted = _interruptible(
        args,
        lambda: HyperSteer.fit(
            model,
            steer,
            base,
            targets=targets,
            variant=args.variant,
            layer=args.layer,
            n_blocks=args.n_blocks,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            max_target_tokens=args.max_target_tokens,
            seed=args.seed,
            chat=_CHAT[args.chat],
            checkpoint=args.checkpoint,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            pool=args.pool,
        ),
    )
    loss = hs.history[-1]["loss"] if hs.history else float("nan")
    what = (
        f"{hs.variant} HyperSteer at layer {hs.layer}, {hs.n_blocks} blocks, "
        f"{len(hs.history)} steps, last loss {loss:.4g}"
    )
    return _finish_training(args, hs, interrupted, what)


# ------------------------------------------------------------------ diagnose


def _check_plot_format(path: str) -> None:
    """Fail before any work when matplotlib is missing or cannot write `path`'s format
    (its extension)."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise CliError("--plot needs matplotlib: pip install matplotlib") from None
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    if Path(path).suffix.lower()[1:] not in formats:
        raise CliError(
            f"--plot {path!r}: cannot tell a figure format from its extension; "
            f"expected one of {', '.join('.' + f for f in formats)}"
        )


def cmd_diagnose(args: argparse.Namespace) -> int:
    """``steerlab diagnose``: the per-layer table, optionally JSON and a figure."""
    from steerlab.diagnostics import diagnose

    for path, option in ((args.json, "--json"), (args.plot, "--plot")):
        if path is not None:
            check_output(path, option)
    if args.plot is not None:
        _check_plot_format(args.plot)
    _positive(args.batch_size, "--batch-size")
    model = _load_model(args)
    pairs = _pairs(args, model)
    report = diagnose(
        model,
        pairs,
        parse_layers(args.layers),
        position=_position(args.position),
        batch_size=args.batch_size,
    )
    print(
        f"{len(pairs)} pairs ({pairs.name or 'unnamed'}), read at {pairs.position!r}; "
        f"recommended layer {report.recommended_layer}"
    )
    print(report.summary())
    if args.json is not None:
        doc = {
            "pairs": pairs.name,
            "n_pairs": len(pairs),
            "model": model.path,
            "recommended_layer": report.recommended_layer,
            "layers": report.records(),
        }
        write_text_atomic(args.json, json.dumps(_finite(doc), indent=1) + "\n", "--json")
        _note(args, f"wrote {args.json}")
    if args.plot is not None:
        try:
            import matplotlib
        except ImportError:
            raise CliError("--plot needs matplotlib: pip install matplotlib") from None
        matplotlib.use("Agg")
        fig = report.plot()
        fmt = Path(args.plot).suffix.lower()[1:]
        write_atomic(args.plot, functools.partial(fig.savefig, format=fmt), "--plot")
        _note(args, f"wrote {args.plot}")
    return 0


# ------------------------------------------------------------------ generate


def _steering(args: argparse.Namespace, model: Model, prompts: list[str]) -> tuple[Any, list[str]]:
    """The steering argument of ``steerlab generate`` and the prompts to generate from
    (HyperSteer renders them as it was trained)."""
    parts: list[Any] = []
    for value in args.vector or []:
        from steerlab.vectors import SteeringVector

        path, coef = parse_path_coef(value, "--vector")
        vec = SteeringVector.load(path, model)
        k = 1.0 if coef is None else coef
        parts.append(vec.dose(k) if args.dose else vec * k)
    if args.scalars is not None:
        from steerlab.scalars import ActivationScalars

        path, beta = parse_path_coef(args.scalars, "--scalars")
        sc = ActivationScalars.load(path, model)
        parts.append(sc if beta is None else sc.with_beta(beta))
    if args.controller is not None:
        from steerlab.controller import SteeringController

        path, strength = parse_path_coef(args.controller, "--controller")
        ctrl = SteeringController.load(path, model)
        return (ctrl if strength is None else ctrl.with_strength(strength)), prompts
    fixed: Any = None
    if len(parts) == 1:
        fixed = parts[0]
    elif parts:
        fixed = functools.reduce(operator.add, (p.to_steering() for p in parts))
    if args.hypersteer is None:
        return fixed, prompts
    from steerlab.hypersteer import HyperSteer

    path, factor = parse_path_coef(args.hypersteer, "--hypersteer")
    hs = HyperSteer.load(path, model)
    rows = hs.steering(
        [args.instruction] * len(prompts), prompts, 1.0 if factor is None else factor
    )
    if fixed is not None:
        extra = fixed.to_steering()
        rows = [r + extra for r in rows]
    return rows, hs.prompts(prompts)


def cmd_generate(args: argparse.Namespace) -> int:
    """``steerlab generate``: steered continuations as JSON lines (or a stream)."""
    if args.controller is not None and (args.vector or args.scalars or args.hypersteer):
        _usage(args, "--controller runs alone; drop --vector/--scalars/--hypersteer")
    if (args.hypersteer is None) != (args.instruction is None):
        _usage(args, "--hypersteer and --instruction go together")
    if args.dose and not args.vector:
        _usage(args, "--dose applies to --vector coefficients; give a --vector")
    if args.output is not None:
        check_output(args.output)
    prompts = list(args.prompts)
    if args.prompts_file is not None:
        prompts += read_texts(args.prompts_file, args.field, "prompts")
    if not prompts:
        _usage(args, "no prompts: give PROMPT arguments or --prompts-file")
    if args.stream and len(prompts) != 1:
        _usage(args, f"--stream takes exactly one prompt, got {len(prompts)}")
    _positive(args.batch_size, "--batch-size")
    model = _load_model(args)
    rendered = _chat_prompts(model, prompts) if args.chat else prompts
    steering, rendered = _steering(args, model, rendered)
    sampling: dict[str, Any] = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
        "stop": args.stop,
    }
    if args.stream:
        pieces = []
        for piece in model.generate_stream(rendered[0], steering=steering, **sampling):
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        texts = ["".join(pieces)]
    else:
        texts = model.generate(
            rendered,
            steering=steering,
            batch_size=args.batch_size,
            ignore_eos=args.ignore_eos,
            **sampling,
        )
    lines = "".join(
        json.dumps({"prompt": p, "text": t}, ensure_ascii=False) + "\n"
        for p, t in zip(prompts, texts, strict=True)
    )
    if args.output is not None:
        write_text_atomic(args.output, lines)
        _note(args, f"wrote {args.output}: {len(texts)} generations")
    elif not args.stream:
        sys.stdout.write(lines)
    return 0


# ------------------------------------------------------------------ export


def cmd_export(args: argparse.Namespace) -> int:
    """``steerlab export``: a saved vector (or a HyperSteer instruction's vector) ->
    llama.cpp control vector GGUF, .npz or steerlab safetensors."""
    from steerlab.vectors import SteeringVector

    if args.hypersteer is not None:
        if len(args.paths) != 1:
            _usage(args, "with --hypersteer give only OUTPUT (the vector comes from it)")
        if args.instruction is None:
            _usage(args, "--hypersteer needs --instruction")
        source, out = None, args.paths[0]
    else:
        if len(args.paths) != 2:
            _usage(args, "give VECTOR and OUTPUT (or --hypersteer PATH --instruction TEXT OUTPUT)")
        if args.instruction is not None or args.base_prompt is not None:
            _usage(args, "--instruction and --base-prompt go with --hypersteer")
        source, out = args.paths
    fmt = args.format
    if fmt is None:
        formats = {".gguf": "gguf", ".npz": "npz", ".safetensors": "safetensors"}
        fmt = formats.get(Path(out).suffix.lower())
        if fmt is None:
            raise CliError(
                f"cannot tell the format of {out!r} from its extension; name it .gguf, .npz "
                f"or .safetensors, or pass --format"
            )
    if args.model_hint is not None and fmt != "gguf":
        raise CliError("--model-hint applies to the gguf format only")
    check_output(out, "OUTPUT")
    if source is not None:
        vec = SteeringVector.load(source)
    else:
        from steerlab.hypersteer import HyperSteer

        model = _load_model(args)
        hs = HyperSteer.load(args.hypersteer, model)
        vec = hs.vector(args.instruction, args.base_prompt)
    layers = parse_layers(args.layers)
    if layers is not None:
        vec = vec.at(layers)
    if args.scale is not None:
        vec = vec * args.scale
    if fmt == "gguf":
        write_atomic(out, lambda tmp: vec.to_gguf(tmp, args.model_hint), "OUTPUT")
    elif fmt == "safetensors":
        write_atomic(out, vec.save, "OUTPUT")
    else:

        def write(tmp: str) -> None:
            np.savez(
                tmp,
                layers=np.asarray(vec.layers, dtype=np.int64),
                directions=np.stack([vec.vectors[k] for k in vec.layers]).astype(np.float32),
            )

        write_atomic(out, write, "OUTPUT")
    _note(args, f"wrote {out}: {fmt}, layers {vec.layers}, d_model {vec.d_model}")
    return 0


# ------------------------------------------------------------------ serve


def cmd_serve(args: argparse.Namespace) -> int:
    """``steerlab serve``: checks the arguments, then hands over to `steerlab.server.run`."""
    from steerlab.catalog import default_model_path

    model = args.model_path or args.model or default_model_path()
    if not os.path.exists(model):
        raise CliError(f"MODEL {model!r} does not exist; expected a .gguf file or a model folder")
    vectors = args.vectors
    if vectors is not None and not os.path.exists(vectors):
        raise CliError(f"--vectors {vectors!r} does not exist; expected a folder")
    if vectors is not None and not os.path.isdir(vectors):
        raise CliError(f"--vectors {vectors!r} is a file; expected a folder of saved vectors")
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be in 0..65535, got {args.port}")
    _positive(args.max_batch, "--max-batch")
    _positive(args.max_queue, "--max-queue")
    if not (math.isfinite(args.batch_window_ms) and args.batch_window_ms >= 0):
        raise CliError(
            f"--batch-window-ms must be a finite number >= 0, got {args.batch_window_ms}"
        )
    try:
        # By name: the module is optional (its extra may be missing).
        server = importlib.import_module("steerlab.server")
    except ImportError as exc:
        raise CliError(
            f"serve needs the server extra (pip install 'steerlab[serve]'): {exc}"
        ) from None
    server.run(
        model,
        vectors=vectors,
        host=args.host,
        port=args.port,
        dtype=args.dtype,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        batch_window_ms=args.batch_window_ms,
    )
    return 0
