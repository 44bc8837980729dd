"""tradeoff.png: decode tokens/s against held-out perplexity, one point per model."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_tradeoff(models: list[dict[str, Any]], path: Path) -> Path:
    """Up and to the left is better (faster, lower perplexity); bars show min–max over prompts."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for index, model in enumerate(models):
        if model["perplexity"] is None:  # a remote model: no perplexity to place it by
            continue
        speed = model["decode_tok_s"]
        x, y = model["perplexity"], speed["median"] or 0.0
        low, high = speed["low"] or y, speed["high"] or y
        color = f"C{index % 10}"
        ax.errorbar([x], [y], yerr=[[y - low], [high - y]], fmt="o", color=color, capsize=4, markersize=8)
        ax.annotate(
            f"{model['name']}\n{model['file_size_mib']:.0f} MiB, {model['rss_model_mib']:.0f} MiB RSS",
            (x, y),
            textcoords="offset points",
            xytext=(8, 6),
            fontsize=8,
            color=color,
        )
    ax.set_xlabel("held-out perplexity on assistant tokens (lower is better)")
    ax.set_ylabel("decode tokens/s: median, bars min–max (higher is better)")
    ax.set_title("lorabot eval: speed vs quality on this CPU")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.35, y=0.25)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
