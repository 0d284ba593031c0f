"""Free generation under several steerings, scored for topic and fluency.

`steered_generations` and its `GenerationReport` are part of `steerlab.evaluate` (which
re-exports them); they live here because they share nothing with the A/B measurements
there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from steerlab import plots
from steerlab.datasets import TopicSet, load_topic, topic_score
from steerlab.errors import InvalidArgumentError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from steerlab.model import Model

__all__ = ["GenerationReport", "steered_generations"]


@dataclass
class GenerationReport:
    """Generations under several steerings, scored for topic and fluency."""

    prompts: list[str]
    conditions: list[str]
    #: texts[condition][i] is the continuation of prompts[i].
    texts: dict[str, list[str]]
    #: on_topic[condition][i]: the continuation mentions the topic (None: no topic).
    on_topic: dict[str, list[bool]] | None
    #: perplexity of each continuation under the unsteered model, given its prompt.
    perplexity: dict[str, npt.NDArray[np.float64]]
    topic: str | None = None

    def records(self) -> list[dict[str, Any]]:
        out = []
        for c in self.conditions:
            ppl = self.perplexity[c]
            row: dict[str, Any] = {
                "condition": c,
                "median_perplexity": float(np.nanmedian(ppl)),
                "mean_log_perplexity": float(np.nanmean(np.log(ppl))),
            }
            if self.on_topic is not None:
                row["on_topic"] = float(np.mean(self.on_topic[c]))
            out.append(row)
        return out

    def to_pandas(self) -> pd.DataFrame:
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from None
        return pd.DataFrame(self.records()).set_index("condition")

    def samples(self, condition: str, n: int = 3) -> list[str]:
        return [p + t for p, t in zip(self.prompts[:n], self.texts[condition][:n], strict=False)]

    def plot(self) -> Figure:
        return plots.plot_generation_report(self)


def steered_generations(
    model: Model,
    prompts: Sequence[str],
    steerings: Mapping[str, Any],
    *,
    topic: TopicSet | str | None = None,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool | None = None,
) -> GenerationReport:
    """Generate every prompt under every steering in shared batches and score them.

    Args:
        model: the model.
        prompts: prompt texts.
        steerings: ``{condition name: steering}`` (``None`` for the unsteered baseline).
        topic: a `steerlab.datasets.TopicSet` or the name of a shipped one; each
            continuation is checked for its keywords.
        max_new_tokens: continuation length.
        temperature: 0 greedy; above 0 samples (seeded per prompt).
        seed: sampling seed.
        batch_size: rows per forward pass.
        progress: progress bar.

    Returns:
        A `GenerationReport`.
    """
    if isinstance(prompts, str) or not prompts:
        raise InvalidArgumentError("prompts must be a non-empty list of str")
    if not steerings:
        raise InvalidArgumentError("steerings is empty; name at least one condition")
    conditions = list(steerings)
    flat_prompts = [p for _ in conditions for p in prompts]
    flat_steer = [steerings[c] for c in conditions for _ in prompts]
    outs = model.generate(
        flat_prompts,
        steering=flat_steer,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed if temperature > 0 else None,
        batch_size=batch_size,
        progress=progress,
    )
    n = len(prompts)
    texts = {c: list(outs[k * n : (k + 1) * n]) for k, c in enumerate(conditions)}
    topic_set = load_topic(topic) if isinstance(topic, str) else topic
    on_topic = (
        None
        if topic_set is None
        else {c: [topic_score(t, topic_set) for t in texts[c]] for c in conditions}
    )
    perplexity = {}
    for c in conditions:
        scored = [t if t else " " for t in texts[c]]
        perplexity[c] = model.perplexity(
            scored, prefix=list(prompts), batch_size=batch_size, progress=False
        )
    return GenerationReport(
        prompts=list(prompts),
        conditions=conditions,
        texts=texts,
        on_topic=on_topic,
        perplexity=perplexity,
        topic=topic_set.name if topic_set is not None else None,
    )
