"""steerlab's demo: steer SmolLM2-135M-Instruct towards joy, and towards gloom.

Run it with ``python -m steerlab.demo`` (or ``make demo``). It

1. loads the embedded default model (SmolLM2-135M-Instruct, GGUF Q4_1), kept quantized
   and run by steerlab's CPU kernels (``--dtype f32`` dequantizes it: exact with respect
   to the reference, ~3x slower to decode on CPU);
2. reads the residual stream after one middle block (15 of 30) on eight joyful and
   eight gloomy sentences written below, and takes the difference of the two means as a
   steering vector (each sentence's activation is its mean over tokens);
3. scales it so that its norm is a fixed share (the "dose", 0.35) of the mean norm of
   the residual stream at that layer. The vector is added at every position, prompt
   included, so a small dose suffices: from about 0.6 the text loses coherence, and
   doses of 1 and more turn it into repeated tokens;
4. answers three chat questions greedily, unsteered, steered towards joy (+vector) and
   towards gloom (-vector): all nine completions run as one batch, each row with its
   own steering.
"""

from __future__ import annotations

import argparse
import textwrap
import time

import numpy as np

import steerlab

__all__ = ["GLOOMY", "JOYFUL", "QUESTIONS", "main", "steering_vector"]

JOYFUL = [
    "What a wonderful day! I am so happy and full of joy.",
    "I laughed with my friends all afternoon, it was delightful.",
    "The sun is shining and everything feels bright and cheerful.",
    "I got the job! I'm thrilled, grateful and excited.",
    "We danced and sang at the party, such a joyful celebration.",
    "My heart is full of love and happiness today.",
    "Everything went perfectly, I feel fantastic and cheerful.",
    "The children giggled with delight as they played in the garden.",
]

GLOOMY = [
    "What a miserable day. I am so sad and full of sorrow.",
    "I sat alone all afternoon, it was lonely and bleak.",
    "The sky is grey and everything feels dark and hopeless.",
    "I lost the job. I'm crushed, bitter and exhausted.",
    "Nobody came to the party, such a depressing failure.",
    "My heart is heavy with grief and despair today.",
    "Everything went wrong, I feel terrible and gloomy.",
    "The empty house was silent, cold and full of regret.",
]

QUESTIONS = [
    "Describe your morning.",
    "What do you think about rainy weekends?",
    "Tell me about your neighbourhood.",
]

LAYER = 15
DOSE = 0.35
MAX_NEW_TOKENS = 40


def steering_vector(
    model: steerlab.Model, positive: list[str], negative: list[str], layer: int
) -> tuple[np.ndarray, float]:
    """Difference of the class means at `layer`, and the mean residual norm there.

    Each text's activation is its mean over tokens, leaving out the first token: in
    SmolLM2 (as in many models) the first position is an "attention sink" whose residual
    norm is ~100 times the others', and it says nothing about the text.

    Args:
        model: the model to read.
        positive: texts of the direction to steer towards.
        negative: texts of the opposite direction.
        layer: the block whose output is read.

    Returns:
        ``(vector, mean_norm)``: the unscaled difference of means (float32 ``[d_model]``)
        and the mean norm of the residual stream at `layer` over the texts' tokens
        (first token left out).
    """
    acts = model.capture(positive + negative, layers=[layer], position="all", progress=False)
    per_text = np.stack([a[0, 1:].mean(axis=0) for a in acts])  # [n_texts, d_model]
    mean_norm = float(np.mean([np.linalg.norm(a[0, 1:], axis=-1).mean() for a in acts]))
    pos, neg = per_text[: len(positive)], per_text[len(positive) :]
    vector = (pos.mean(axis=0) - neg.mean(axis=0)).astype(np.float32)
    return vector, mean_norm


def main(argv: list[str] | None = None) -> None:
    """Run the demo; ``--layer``, ``--dose`` and ``--max-new-tokens`` override the defaults."""
    parser = argparse.ArgumentParser(prog="python -m steerlab.demo", description=__doc__)
    parser.add_argument("--layer", type=int, default=LAYER, help="block to steer after")
    parser.add_argument(
        "--dose", type=float, default=DOSE, help="||coef * v|| / mean residual norm"
    )
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    # auto keeps Q4_1 quantized (steerlab's AVX2 kernels: ~4x the f32 decode rate);
    # f32 dequantizes the same file.
    parser.add_argument("--dtype", default="auto", choices=["auto", "f32"])
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    model = steerlab.Model.load(dtype=args.dtype)
    t_load = time.perf_counter() - t0
    print(f"Loaded {model.path}")
    print(
        f"  {model.arch}, {model.n_layers} layers, d_model {model.d_model}, "
        f"weights {model.dtype} ({t_load:.2f} s)"
    )

    t0 = time.perf_counter()
    vector, mean_norm = steering_vector(model, JOYFUL, GLOOMY, args.layer)
    coef = args.dose * mean_norm / float(np.linalg.norm(vector))
    t_vec = time.perf_counter() - t0
    print(
        f"\nSteering vector: mean(joyful) - mean(gloomy) at layer {args.layer} over "
        f"{len(JOYFUL)} + {len(GLOOMY)} sentences ({t_vec:.2f} s)"
    )
    print(
        f"  ||v|| = {np.linalg.norm(vector):.2f}, mean residual norm = {mean_norm:.2f}, "
        f"coefficient = {coef:.2f} (dose ||coef*v|| / mean norm = {args.dose:g})"
    )

    joy = steerlab.Steering({args.layer: vector}) * coef
    prompts = [model.chat_prompt([{"role": "user", "content": q}]) for q in QUESTIONS]
    settings = [("unsteered", None), ("joyful  +v", joy), ("gloomy  -v", -joy)]
    rows = [(p, label, s) for p in range(len(prompts)) for label, s in settings]

    t0 = time.perf_counter()
    outs = model.generate(
        [prompts[p] for p, _, _ in rows],
        steering=[s for _, _, s in rows],
        max_new_tokens=args.max_new_tokens,
        batch_size=len(rows),
        progress=False,
    )
    t_gen = time.perf_counter() - t0

    for p, question in enumerate(QUESTIONS):
        print(f"\n>>> {question}")
        for (q, label, _), text in zip(rows, outs, strict=True):
            if q == p:
                body = " ".join(text.split())
                wrapped = textwrap.fill(
                    body, width=96, initial_indent=f"  [{label}] ", subsequent_indent=" " * 16
                )
                print(wrapped)

    n_new = len(rows) * args.max_new_tokens
    print(
        f"\nGenerated {len(rows)} completions (up to {args.max_new_tokens} tokens each, one "
        f"batch, per-row steering) in {t_gen:.2f} s; total "
        f"{t_load + t_vec + t_gen:.2f} s (at most {n_new} new tokens)"
    )


if __name__ == "__main__":
    main()
