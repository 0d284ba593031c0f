"""The `steerlab` command line: capture activations, train steering vectors and learned
steering modules, diagnose contrast pairs, generate with steering, export control vectors
and serve a model over an OpenAI-compatible API.

``steerlab --help`` and ``steerlab COMMAND --help`` are the manual. The commands run in
`steerlab._cli_run` (loaded when a command runs); this module only builds the argument
parser and turns errors into exit codes:

- 0: success;
- 1: a bad input: a steerlab error (`steerlab.SteerlabError`, e.g. a layer outside the
  model), a missing or malformed file, printed as one line
  ``steerlab COMMAND: error: MESSAGE`` on standard error, without a traceback;
- 2: a usage error (an unknown option, a missing argument), reported by argparse;
- 130: interrupted by Ctrl-C; outputs are written atomically (a temporary file, then a
  rename), so nothing half-written is left behind.

Importing this module imports neither matplotlib, pandas, fastapi nor ray: each is
imported by the command that needs it, when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "main"]

_EXIT_CODES = """\
exit codes:
  0    success
  1    bad input: a steerlab error (e.g. a layer outside the model) or a missing or
       malformed file, printed as one line 'steerlab COMMAND: error: MESSAGE' on stderr
  2    usage error (unknown option, missing or malformed argument)
  130  interrupted (Ctrl-C); outputs are written atomically, so none is half-written"""

_LAYERS_HELP = (
    "layers: comma-separated indices (negative from the end; write --layers=-1 for a "
    "negative first item), START:STOP ranges (STOP excluded: 8:12 is 8,9,10,11) or 'all'. "
    "Layer i is the residual stream after decoder block i (Hugging Face hidden_states[i+1])"
)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks and appends ``(default: X)`` to options whose
    default is worth stating (not None/False, and not already in the text)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" not in text
            and action.option_strings
            and default is not None
            and default is not False
            and default is not argparse.SUPPRESS
            and not isinstance(default, list)
        ):
            text += " (default: %(default)s)"
        return text


def _add_global(p: argparse.ArgumentParser, top: bool) -> None:
    """The options every command takes. On the top-level parser they carry the real
    defaults; on each command they are suppressed unless given, so ``steerlab --quiet
    capture ...`` and ``steerlab capture --quiet ...`` both work."""

    def d(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    g = p.add_argument_group("model and output options (also accepted before the command)")
    g.add_argument(
        "--model",
        metavar="PATH",
        default=d(None),
        help="a .gguf file or a Hugging Face model folder (default: the embedded "
        "SmolLM2-135M-Instruct, or $STEERLAB_DEFAULT_MODEL)",
    )
    g.add_argument(
        "--dtype",
        choices=("auto", "f32"),
        default=d("auto"),
        help="weights: 'auto' keeps GGUF weights quantized, 'f32' dequantizes (default: auto)",
    )
    g.add_argument(
        "--device",
        default=d("cpu"),
        metavar="DEV",
        help="'cpu', 'cuda' or 'cuda:N' (default: cpu)",
    )
    g.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=d(False),
        help="no progress bars (default: a tqdm bar on stderr when a step spans several batches)",
    )


def _sub(
    subs: Any, name: str, summary: str, description: str, examples: str, usage: str | None = None
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subs.add_parser(
        name,
        usage=usage,
        help=summary,
        description=description,
        epilog=f"examples:\n{examples}\n\n{_EXIT_CODES}",
        formatter_class=_Formatter,
    )
    p.set_defaults(_parser=p)
    return p


# ------------------------------------------------------------------ shared groups


def _pairs_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("contrast pairs (one of --pairs / --dataset)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--pairs",
        metavar="FILE.jsonl",
        help="JSON Lines, one pair per line, in one of three forms: "
        '{"positive": ..., "negative": ...} (finished texts); '
        '{"prompt": ..., "positive": ..., "negative": ...} (a prompt and two completions); '
        '{"question": ..., "matching": ..., "not_matching": ...} (an A/B record, rendered '
        "with --prompt-type)",
    )
    src.add_argument(
        "--dataset",
        metavar="NAME",
        help="a shipped dataset: a behaviour (corrigibility, formality, optimism, refusal, "
        "sycophancy: A/B records) or 'sentiment' (positive/negative sentence pairs)",
    )
    g.add_argument(
        "--prompt-type",
        default="prefilled",
        metavar="TYPE",
        help="how A/B records are rendered: a '+'-joined subset of prefilled, instruction, "
        "few_shot (Braun et al. 2025)",
    )
    g.add_argument(
        "--chat",
        action="store_true",
        help="render A/B records and prompt/completion pairs with the model's chat template",
    )
    g.add_argument(
        "--limit", type=int, metavar="N", help="use only the first N pairs (default: all)"
    )
    g.add_argument(
        "--position",
        metavar="POS",
        help="where activations are read: last, mean, mean_skip_first or a token index "
        "(default: the last token)",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help="A/B letter assignment and few-shot example choice",
    )


def _sampling_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="new tokens at most")
    g.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        metavar="T",
        help="0 is greedy decoding; above 0 samples (default: 0)",
    )
    g.add_argument("--top-k", type=int, metavar="K", help="sample among the K likeliest tokens")
    g.add_argument(
        "--top-p", type=float, metavar="P", help="nucleus sampling: the smallest set reaching P"
    )
    g.add_argument(
        "--seed", type=int, metavar="S", help="sampling seed: prompt i samples with seed S+i"
    )
    g.add_argument(
        "--stop",
        action="append",
        metavar="TEXT",
        help="a string that ends a generation, cut from the text (repeatable)",
    )
    g.add_argument(
        "--ignore-eos",
        action="store_true",
        help="keep generating through end-of-sequence tokens (exactly --max-new-tokens)",
    )


def _train_common(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="PATH",
        help=f"where to save the result ({default_out}); written atomically",
    )


# ------------------------------------------------------------------ commands


def _capture_parser(subs: Any) -> None:
    p = _sub(
        subs,
        "capture",
        "read activations of texts into a .npy/.npz file",
        "Read the model's activations on texts at some layers and save them as numpy.\n\n"
        "Output shape: float32 [n_texts, n_layers, d_model] for a reduced position (last,\n"
        "mean, mean_skip_first, a token index), in layer order as given. A .npy file holds\n"
        "that array alone; a .npz file holds 'activations' and 'layers' (int64, the\n"
        "non-negative layer indices). With --position all (every token) the output must be\n"
        ".npz: 'text_0', 'text_1', ... each [n_layers, n_tokens_i, d_model], plus 'layers'\n"
        "and 'n_tokens'.",
        "  steerlab capture texts.txt --layers 10,15 -o acts.npy\n"
        "  steerlab capture reviews.jsonl --field review --layers 8:12 --position mean -o acts.npz\n"
        "  steerlab capture texts.txt --layers=-1 --position all -o tokens.npz",
    )
    p.add_argument(
        "texts",
        metavar="TEXTS",
        help="a .txt file (one text per non-blank line; '-' reads stdin) or a .jsonl file "
        "(the string field --field of each object)",
    )
    p.add_argument(
        "--field", default="text", help="the JSONL field holding each text (default: text)"
    )
    p.add_argument("--layers", required=True, metavar="LAYERS", help=_LAYERS_HELP)
    p.add_argument(
        "--position",
        default="last",
        metavar="POS",
        help="last, mean, mean_skip_first (mean without the first token, the attention "
        "sink), a token index (negative from the end) or all (every token)",
    )
    p.add_argument(
        "--site",
        default="resid_post",
        choices=("resid_post", "resid_mid", "attn_out", "mlp_out"),
        help="what to read at each layer: the residual stream after the block, between "
        "attention and MLP, or what attention / the MLP adds",
    )
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="texts per forward pass")
    p.add_argument(
        "-o", "--output", required=True, metavar="PATH", help="a .npy or .npz file to write"
    )
    _add_global(p, top=False)


def _train_parsers(subs: Any) -> None:
    t = subs.add_parser(
        "train",
        help="train a steering vector or a learned steering module",
        description="Train a steering vector (contrastive methods, mean-centring, gradient-"
        "optimised) or a learned module (activation scalars, the steering controller, "
        "HyperSteer) and save it with its own save(). Each kind is a sub-command: "
        "'steerlab train KIND --help' lists its options.",
        epilog="examples:\n"
        "  steerlab train vector --dataset optimism --layers 12 -o optimism.safetensors\n"
        "  steerlab train mean-centring --topic ocean --layers 12 -o ocean.safetensors\n"
        "  steerlab train scalars --task ioi --limit 32 --steps 50 --layers 8:16 -o ioi.safetensors\n\n"
        + _EXIT_CODES,
        formatter_class=_Formatter,
    )
    t.set_defaults(_parser=t)
    _add_global(t, top=False)
    kinds = t.add_subparsers(dest="kind", metavar="KIND", required=True)

    # vector ------------------------------------------------------------------
    p = _sub(
        kinds,
        "vector",
        "a steering vector from contrast pairs (CAA mean difference, PCA, logistic)",
        "Build a steering vector from contrast pairs (SteeringVector.train): the mean\n"
        "difference of the two sides' activations (mean_diff, CAA), the first principal\n"
        "component of the differences (pca_diff) or of the centred activations\n"
        "(pca_center), or a logistic-regression direction (logistic). Saved as steerlab\n"
        "safetensors with metadata (model fingerprint, method, dataset hash, residual\n"
        "norms for relative doses); load it with steerlab.SteeringVector.load.",
        "  steerlab train vector --dataset optimism --layers 12 -o optimism.safetensors\n"
        "  steerlab train vector --pairs pairs.jsonl --method pca_diff --layers 8:16 -o v.safetensors\n"
        "  steerlab train vector --dataset sycophancy --prompt-type prefilled+instruction --chat \\\n"
        "      --layers 14 -o syco.safetensors",
    )
    p.add_argument(
        "--method",
        default="mean_diff",
        choices=("mean_diff", "pca_diff", "pca_center", "logistic"),
        help="how the direction is fitted",
    )
    p.add_argument("--layers", required=True, metavar="LAYERS", help=_LAYERS_HELP)
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="texts per forward pass")
    _pairs_options(p)
    _train_common(p, "steerlab safetensors")
    _add_global(p, top=False)

    # mean-centring -----------------------------------------------------------
    p = _sub(
        kinds,
        "mean-centring",
        "a vector: mean activation on target texts minus a background mean",
        "Mean-centring (Jorgensen et al. 2023): the mean activation over target texts\n"
        "minus the mean over a general background corpus (SteeringVector.mean_centring).",
        "  steerlab train mean-centring --topic ocean --layers 12 -o ocean.safetensors\n"
        "  steerlab train mean-centring --target legal.txt --background corpus.txt \\\n"
        "      --layers 10,12 -o legal.safetensors",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--target",
        metavar="FILE",
        help="target texts: .txt (one per line) or .jsonl (field --field)",
    )
    src.add_argument(
        "--topic",
        metavar="NAME",
        help="a shipped topic or genre set (cooking, fairy_tale, legal, ocean, space, sports)",
    )
    p.add_argument(
        "--background",
        metavar="FILE",
        help="background texts (default: the ~330 neutral sentences shipped with steerlab)",
    )
    p.add_argument("--field", default="text", help="the JSONL field holding each text")
    p.add_argument("--layers", default="-1", metavar="LAYERS", help=_LAYERS_HELP)
    p.add_argument(
        "--position",
        default="mean_skip_first",
        metavar="POS",
        help="mean_skip_first, mean, last or a token index",
    )
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="texts per forward pass")
    _train_common(p, "steerlab safetensors")
    _add_global(p, top=False)

    # optimize ----------------------------------------------------------------
    p = _sub(
        kinds,
        "optimize",
        "a vector trained by gradient descent on target completions",
        "An additive vector per layer trained through the frozen model so that it gives\n"
        "target completions high likelihood after their prompts (SteeringVector.optimize;\n"
        "AxBench's trained-vector baseline). With --negatives, a preference loss against\n"
        "the neutral completion instead.",
        "  steerlab train optimize --style pirate --layers 12 --steps 100 -o pirate.safetensors\n"
        "  steerlab train optimize --data style.jsonl --negatives --layers 10 -o style.safetensors",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--data",
        metavar="FILE.jsonl",
        help='JSON Lines: {"prompt": ..., "completion": ..., "negative": ...} ("negative" '
        "needed with --negatives)",
    )
    src.add_argument("--style", metavar="NAME", help="a shipped style set (pirate)")
    p.add_argument(
        "--split",
        default="train",
        choices=("train", "heldout", "all"),
        help="which part of --style to train on",
    )
    p.add_argument(
        "--negatives", action="store_true", help="train against the negative completions"
    )
    p.add_argument("--layers", required=True, metavar="LAYERS", help=_LAYERS_HELP)
    p.add_argument("--steps", type=int, default=100, help="optimiser steps")
    p.add_argument("--lr", type=float, metavar="LR", default=1e-2, help="AdamW learning rate")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="examples per step")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="batch order")
    p.add_argument(
        "--keep", default="last", choices=("last", "best"), help="which step's vector to save"
    )
    p.add_argument(
        "--chat", action="store_true", help="render prompts with the model's chat template"
    )
    p.add_argument("--limit", type=int, metavar="N", help="use only the first N examples")
    _interrupt_option(p)
    _train_common(p, "steerlab safetensors")
    _add_global(p, top=False)

    # scalars -----------------------------------------------------------------
    p = _sub(
        kinds,
        "scalars",
        "activation scalars that flip a target/foil answer (Stoehr et al. 2024)",
        "Learn activation-scaling modules at (site, layer, position) that make the model\n"
        "prefer each target answer over its foil (ActivationScalars.fit): ActivScalar\n"
        "(kind scalar), SteerVec (vector) or DynScalar (dynamic). Static kinds need\n"
        "prompts of one token length (the shipped tasks' 'fixed' layout).",
        "  steerlab train scalars --task ioi --limit 32 --steps 50 --layers 8:16 -o ioi.safetensors\n"
        "  steerlab train scalars --data answers.jsonl --kind dynamic --layers 10:20 -o dyn.safetensors",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--data",
        metavar="FILE.jsonl",
        help='JSON Lines: {"prompt": ..., "target": " Paris", "foil": " Rome"} (the first '
        "token of target/foil is the answer)",
    )
    src.add_argument(
        "--task",
        metavar="NAME",
        help="a shipped task (country_capital, country_capital_context, ioi)",
    )
    p.add_argument(
        "--split",
        default="train",
        choices=("train", "held_out", "all"),
        help="which part of --task to train on",
    )
    p.add_argument(
        "--lengths",
        default="fixed",
        choices=("fixed", "varied", "all"),
        help="which token layouts of --task",
    )
    p.add_argument(
        "--kind",
        dest="scalar_kind",
        default="scalar",
        choices=("scalar", "vector", "dynamic"),
        help="ActivScalar, SteerVec or DynScalar",
    )
    p.add_argument(
        "--sites",
        default="attn_out,mlp_out",
        metavar="SITES",
        help="comma-separated sub-block outputs (attn_out, mlp_out, resid_mid, resid_post)",
    )
    p.add_argument(
        "--layers", default="all", metavar="LAYERS", help=_LAYERS_HELP + " (default: all)"
    )
    p.add_argument(
        "--effectiveness", type=float, metavar="W", default=1.0, help="loss weight: flip the answer"
    )
    p.add_argument(
        "--faithfulness",
        type=float,
        metavar="W",
        default=1.0,
        help="loss weight: KL on the other tokens",
    )
    p.add_argument(
        "--sparsity", type=float, metavar="W", default=1e-3, help="loss weight: L1 of the params"
    )
    p.add_argument("--steps", type=int, default=300, help="optimiser steps")
    p.add_argument("--lr", type=float, metavar="LR", default=1e-2, help="AdamW learning rate")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="records per step")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="batch order")
    p.add_argument(
        "--keep", default="last", choices=("last", "best"), help="which step's parameters"
    )
    p.add_argument("--limit", type=int, metavar="N", help="use only the first N records")
    _interrupt_option(p)
    _train_common(p, "safetensors; load with steerlab.ActivationScalars.load")
    _add_global(p, top=False)

    # controller --------------------------------------------------------------
    p = _sub(
        kinds,
        "controller",
        "a weighted steering controller that fires on harmful requests (Hegazy et al. 2025)",
        "Train a small network that reads the last layers' residual stream and gates a\n"
        "refusal direction per prompt and decoding step (SteeringController.fit). By\n"
        "default it trains on the shipped harmful/benign requests (train split).",
        "  steerlab train controller --limit 64 --epochs 10 -o controller.safetensors\n"
        "  steerlab train controller --harmful harmful.txt --benign benign.txt \\\n"
        "      --hidden 256 --strength 6 -o ctrl.safetensors",
    )
    p.add_argument(
        "--harmful",
        metavar="FILE",
        help="harmful requests, .txt or .jsonl (field 'text'); with --benign (default: the "
        "shipped requests)",
    )
    p.add_argument("--benign", metavar="FILE", help="benign requests (with --harmful)")
    p.add_argument(
        "--limit", type=int, metavar="N", help="use only the first N requests of each class"
    )
    p.add_argument(
        "--direction",
        metavar="VECTOR",
        help="a saved steering vector to gate (default: the harmful-minus-benign mean "
        "difference at each steered layer)",
    )
    p.add_argument(
        "--layers",
        metavar="LAYERS",
        help=_LAYERS_HELP + " (default: the direction's layers, else the middle half)",
    )
    p.add_argument("--read-layers", type=int, default=4, metavar="K", help="read the last K layers")
    p.add_argument(
        "--hidden", type=int, metavar="N", default=1024, help="hidden width of the network"
    )
    p.add_argument(
        "--strength", type=float, metavar="X", default=4.0, help="alpha, in residual-stream units"
    )
    p.add_argument("--epochs", type=int, metavar="N", default=10, help="stage-1 epochs (the gate)")
    p.add_argument("--lr", type=float, metavar="LR", default=5e-5, help="stage-1 learning rate")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="requests per step")
    p.add_argument(
        "--stage2-steps",
        type=int,
        metavar="N",
        default=0,
        help="end-to-end steps through the model",
    )
    p.add_argument(
        "--validation",
        type=float,
        metavar="X",
        default=0.2,
        help="fraction held out to pick the best epoch",
    )
    p.add_argument(
        "--seed", type=int, default=0, metavar="S", help="initialisation, split and batch order"
    )
    p.add_argument(
        "--chat",
        default="auto",
        choices=("auto", "yes", "no"),
        help="render requests with the chat template (auto: plain requests are rendered)",
    )
    _interrupt_option(p)
    _train_common(p, "safetensors; load with steerlab.SteeringController.load")
    _add_global(p, top=False)

    # hypersteer --------------------------------------------------------------
    p = _sub(
        kinds,
        "hypersteer",
        "a HyperSteer hypernetwork: steering vectors from instructions (Sun et al. 2025)",
        "Train a hypernetwork (a trainable copy of the model's first blocks) that writes a\n"
        "steering vector for a plain-language instruction (HyperSteer.fit). By default it\n"
        "trains on --n-pairs pairs of the shipped held-in instructions and training base\n"
        "prompts, with targets the model writes itself (self-distillation).",
        "  steerlab train hypersteer --n-pairs 64 --n-blocks 2 -o hyper.safetensors\n"
        "  steerlab train hypersteer --data pairs.jsonl --variant no_context -o hyper.safetensors",
    )
    p.add_argument(
        "--data",
        metavar="FILE.jsonl",
        help='JSON Lines: {"instruction": ..., "prompt": ..., "target": ...} ("target" '
        "optional: the model writes missing ones; all or none)",
    )
    p.add_argument(
        "--n-pairs",
        type=int,
        default=64,
        metavar="N",
        help="pairs drawn from the shipped data (without --data)",
    )
    p.add_argument(
        "--variant",
        default="cross_attention",
        choices=("cross_attention", "no_context"),
        help="whether the vector also reads the base prompt",
    )
    p.add_argument(
        "--layer", type=int, metavar="L", help="the steered layer (default: 3/4 of the depth)"
    )
    p.add_argument("--n-blocks", type=int, metavar="N", default=4, help="copied base blocks")
    p.add_argument("--epochs", type=int, metavar="N", default=1, help="passes over the pairs")
    p.add_argument(
        "--lr", type=float, metavar="LR", help="learning rate (default: 8e-5 * sqrt(20 / n_blocks))"
    )
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="pairs per step")
    p.add_argument("--max-target-tokens", type=int, default=48, metavar="N", help="longest target")
    p.add_argument("--pool", default="last", choices=("last", "mean"), help="what the head reads")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="pair sampling and batch order")
    p.add_argument(
        "--chat",
        default="auto",
        choices=("auto", "yes", "no"),
        help="render base prompts with the chat template (auto: plain requests are rendered)",
    )
    p.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="save the hypernetwork here during training (every --checkpoint-every steps and "
        "at the end; written in place, unlike --output)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="N",
        help="steps between checkpoints (0: only at the end; needs --checkpoint)",
    )
    p.add_argument("--resume", metavar="PATH", help="continue from a checkpoint of the same data")
    _interrupt_option(p)
    _train_common(p, "safetensors; load with steerlab.HyperSteer.load")
    _add_global(p, top=False)


def _interrupt_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--save-interrupted",
        action="store_true",
        help="on Ctrl-C after some steps, still save what the completed steps give (the "
        "exit code is 130 either way; without it nothing is written)",
    )


def _diagnose_parser(subs: Any) -> None:
    p = _sub(
        subs,
        "diagnose",
        "per-layer reliability diagnostics of contrast pairs (Braun et al. 2025)",
        "For each layer: the mean cosine of each pair's difference with the mean\n"
        "difference (directional agreement), its spread, the separability d' of the two\n"
        "sides on the difference-of-means line, |mean diff| / mean |h| and the share of\n"
        "texts on the right side of the midpoint; the recommended layer has the highest\n"
        "mean cosine. Needs at least 2 pairs.",
        "  steerlab diagnose --dataset optimism --limit 32\n"
        "  steerlab diagnose --pairs pairs.jsonl --layers 4:20 --json diag.json --plot diag.png",
    )
    _pairs_options(p)
    p.add_argument(
        "--layers", default="all", metavar="LAYERS", help=_LAYERS_HELP + " (default: all)"
    )
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="texts per forward pass")
    p.add_argument(
        "--json",
        metavar="PATH",
        help="also write {'recommended_layer', 'layers': [per-layer records]} as JSON",
    )
    p.add_argument(
        "--plot",
        metavar="PATH.png",
        help="also save the diagnosis figure (needs matplotlib)",
    )
    _add_global(p, top=False)


def _generate_parser(subs: Any) -> None:
    p = _sub(
        subs,
        "generate",
        "generate text with steering vectors, scalars, a controller or HyperSteer",
        "Continue prompts with the model, steered. Without --stream every result is one\n"
        'JSON line {"prompt": ..., "text": ...} (in prompt order) on stdout or in --output.\n'
        "Steerings combine: the vectors (summed), scalars and HyperSteer's vector are all\n"
        "added; a controller runs alone.",
        "  steerlab generate 'Today I feel' --vector optimism.safetensors:4\n"
        "  steerlab generate --prompts-file prompts.txt --vector a.safetensors:2 \\\n"
        "      --vector b.safetensors:-1 -o out.jsonl\n"
        "  steerlab generate 'How do I pick a lock?' --chat --controller ctrl.safetensors\n"
        "  steerlab generate 'Describe your day.' --hypersteer hyper.safetensors \\\n"
        "      --instruction 'Mention the ocean.'\n"
        "  steerlab generate 'Once upon a time' --stream --temperature 0.8 --seed 1",
    )
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompts (or --prompts-file)")
    p.add_argument(
        "--prompts-file",
        metavar="FILE",
        help="more prompts: .txt (one per line, '-' for stdin) or .jsonl (field --field)",
    )
    p.add_argument("--field", default="prompt", help="the JSONL field holding each prompt")
    p.add_argument(
        "--chat",
        action="store_true",
        help="wrap each prompt as a user turn of the model's chat template",
    )
    g = p.add_argument_group("steering")
    g.add_argument(
        "--vector",
        action="append",
        metavar="PATH[:COEF]",
        help="a saved steering vector times COEF (default 1); repeatable, the vectors add up",
    )
    g.add_argument(
        "--dose",
        action="store_true",
        help="read each --vector COEF as a relative dose (||coef v|| = COEF * mean ||h|| at "
        "each layer; 0.05-0.3 is gentle to strong) instead of an absolute factor",
    )
    g.add_argument(
        "--scalars",
        metavar="PATH[:BETA]",
        help="saved activation scalars at strength BETA (default 1); static kinds need "
        "prompts of their training length in tokens",
    )
    g.add_argument(
        "--controller",
        metavar="PATH[:STRENGTH]",
        help="a saved steering controller (STRENGTH replaces its alpha)",
    )
    g.add_argument(
        "--hypersteer",
        metavar="PATH[:FACTOR]",
        help="a saved HyperSteer hypernetwork; its vector for --instruction times FACTOR",
    )
    g.add_argument("--instruction", metavar="TEXT", help="the instruction for --hypersteer")
    _sampling_options(p)
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="prompts per batch")
    o = p.add_argument_group("output")
    o.add_argument(
        "--stream",
        action="store_true",
        help="print the text of one prompt as it is generated (plain text on stdout; "
        "--output still gets the JSON line)",
    )
    o.add_argument("-o", "--output", metavar="PATH", help="write the JSON lines here instead")
    _add_global(p, top=False)


def _export_parser(subs: Any) -> None:
    p = _sub(
        subs,
        "export",
        "write a steering vector as a llama.cpp control vector (GGUF), numpy or safetensors",
        "Convert a steerlab vector (safetensors, from 'steerlab train') for other tools, or\n"
        "freeze a HyperSteer instruction into a fixed vector (--hypersteer; loads the model).\n\n"
        "gguf: a llama.cpp / repeng control vector. Layer numbering: steerlab layer N (the\n"
        "output of decoder block N) is written as 'direction.N' unchanged, which llama.cpp\n"
        "adds to the output of block N; llama.cpp has no slot for block 0's output, so a\n"
        "vector with layer 0 is refused (drop it with --layers). Directions are written\n"
        "as they are (after --scale); use it with llama.cpp's --control-vector FILE or\n"
        "--control-vector-scaled FILE SCALE.\n\n"
        "npz: 'layers' (int64 [L]) and 'directions' (float32 [L, d_model]).\n"
        "safetensors: a steerlab vector (SteeringVector.load reads it).",
        "  steerlab export optimism.safetensors optimism.gguf\n"
        "  steerlab export optimism.safetensors optimism.gguf --scale 4 --layers 10:16\n"
        "  steerlab export optimism.safetensors optimism.npz\n"
        "  steerlab export --hypersteer hyper.safetensors --instruction 'Mention the ocean.' \\\n"
        "      ocean.gguf",
        usage="steerlab export [options] VECTOR OUTPUT\n"
        "       steerlab export [options] --hypersteer PATH --instruction TEXT "
        "[--base-prompt TEXT] OUTPUT",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="[VECTOR] OUTPUT",
        help="a steerlab vector file (.safetensors) and the file to write (.gguf, .npz or "
        ".safetensors); only OUTPUT with --hypersteer",
    )
    p.add_argument(
        "--format",
        choices=("gguf", "npz", "safetensors"),
        help="output format (default: from OUTPUT's extension)",
    )
    p.add_argument("--scale", type=float, metavar="K", help="multiply the directions by K first")
    p.add_argument("--layers", metavar="LAYERS", help="export only these layers (default: all)")
    p.add_argument(
        "--model-hint",
        metavar="ARCH",
        help="the GGUF's architecture hint (default: the vector's model architecture)",
    )
    g = p.add_argument_group("HyperSteer (instead of VECTOR)")
    g.add_argument(
        "--hypersteer",
        metavar="PATH",
        help="a saved HyperSteer hypernetwork: export its vector for --instruction",
    )
    g.add_argument("--instruction", metavar="TEXT", help="the instruction to freeze")
    g.add_argument(
        "--base-prompt",
        metavar="TEXT",
        help="the base prompt a cross_attention hypernetwork writes the vector for (that "
        "variant reads it; no_context takes none)",
    )


def _serve_parser(subs: Any) -> None:
    p = _sub(
        subs,
        "serve",
        "serve a model over an OpenAI-compatible HTTP API with per-request steering",
        "Start an OpenAI-compatible server (FastAPI + uvicorn; pip install 'steerlab[serve]')\n"
        "with /v1/chat/completions, /v1/completions and /v1/models. A request may name\n"
        "stored vectors and modules from --vectors with strengths, e.g.\n"
        '"steering": {"optimism": 0.2}. Concurrent requests are batched, each row with its\n'
        "own steering. Stop it with Ctrl-C.",
        "  steerlab serve --vectors vectors/\n"
        "  steerlab serve model.gguf --vectors vectors/ --host 0.0.0.0 --port 8080 --max-batch 16",
    )
    p.add_argument(
        "model_path",
        nargs="?",
        metavar="MODEL",
        help="a .gguf file or Hugging Face folder (default: --model, else the embedded model)",
    )
    p.add_argument(
        "--vectors",
        metavar="DIR",
        default=None,
        help="a folder of saved vectors and modules (vectors, llama.cpp control vectors, "
        "activation scalars, controllers, HyperSteer); a file's name without extension is "
        "the name requests use (default: none; requests may still send raw vectors)",
    )
    p.add_argument("--host", metavar="ADDR", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, metavar="N", default=8000, help="TCP port")
    p.add_argument(
        "--max-batch", type=int, default=8, metavar="N", help="requests decoded together at most"
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=64,
        metavar="N",
        help="requests waiting at most; more are answered 503",
    )
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=5.0,
        metavar="MS",
        help="after the first waiting request, how long to wait for more to batch with it "
        "(milliseconds; default 5)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``steerlab`` argument parser (every command and option)."""
    from steerlab import __version__

    parser = argparse.ArgumentParser(
        prog="steerlab",
        description="Activation steering for language models, from the shell: read a "
        "model's activations, build steering vectors and learned steering modules, check "
        "whether a vector will be reliable, and generate with the model steered. Models are "
        "GGUF files or Hugging Face folders; the default is the embedded "
        "SmolLM2-135M-Instruct. Run 'steerlab COMMAND --help' for a command's manual.",
        epilog="examples:\n"
        "  steerlab capture texts.txt --layers 10,15 -o acts.npy\n"
        "  steerlab diagnose --dataset optimism --limit 32\n"
        "  steerlab train vector --dataset optimism --layers 12 -o optimism.safetensors\n"
        "  steerlab generate 'Today I feel' --vector optimism.safetensors:4\n"
        "  steerlab export optimism.safetensors optimism.gguf\n"
        "  steerlab serve --vectors vectors/\n\n" + _EXIT_CODES,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"steerlab {__version__}")
    _add_global(parser, top=True)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _capture_parser(subs)
    _train_parsers(subs)
    _diagnose_parser(subs)
    _generate_parser(subs)
    _export_parser(subs)
    _serve_parser(subs)
    # export (for --hypersteer) and serve take --model & co. too (serve's MODEL wins).
    for name in ("export", "serve"):
        _add_global(subs.choices[name], top=False)
    return parser


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``steerlab`` console script.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 success, 1 bad input (one-line message on stderr), 2 usage
        error (argparse exits with it), 130 interrupted.
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C while starting up (importing, parsing), before a command runs.
        print("steerlab: interrupted", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command + (f" {args.kind}" if getattr(args, "kind", None) else "")
    prefix = f"steerlab {command}"
    from steerlab import _cli_run
    from steerlab._cli_io import CliError
    from steerlab.errors import SteerlabError

    try:
        return _cli_run.run(args, parser)
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `| head`): stop quietly.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (SteerlabError, CliError, OSError) as exc:
        print(f"{prefix}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
