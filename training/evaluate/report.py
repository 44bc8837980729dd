"""report.json (everything, for tools) and report.md (tables, trade-off in numbers, answers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _spread(spread: dict[str, Any], digits: int = 2) -> str:
    if spread["median"] is None:
        return "–"
    return f"{spread['median']:.{digits}f} ({spread['low']:.{digits}f}–{spread['high']:.{digits}f})"


ROWS: list[tuple[str, Any]] = [
    ("file size (MiB)", lambda m: _num(m["file_size_mib"], 1)),
    ("load time (s)", lambda m: _num(m["load_s"])),
    ("resident memory after load, process (MiB)", lambda m: _num(m["rss_after_load_mib"], 0)),
    ("resident memory added by the model (MiB)", lambda m: _num(m["rss_model_mib"], 0)),
    ("time to first token, s: median (min–max)", lambda m: _spread(m["ttft_s"], 3)),
    ("decode tokens/s: median (min–max)", lambda m: _spread(m["decode_tok_s"], 1)),
    ("held-out loss (nats/token)", lambda m: _num(m["heldout_loss"], 4)),
    ("held-out perplexity", lambda m: _num(m["perplexity"], 3)),
    ("assistant tokens scored", lambda m: str(m["heldout_tokens"])),
]


def tradeoff_lines(models: list[dict[str, Any]]) -> list[str]:
    """Each model against the first one (the baseline), in numbers."""
    base = models[0]
    lines = []
    for model in models[1:]:
        parts = []
        b_rate, m_rate = base["decode_tok_s"]["median"], model["decode_tok_s"]["median"]
        if b_rate and m_rate:
            parts.append(f"decodes at {m_rate:.1f} tok/s vs {b_rate:.1f} ({m_rate / b_rate:.2f}×)")
        b_ttft, m_ttft = base["ttft_s"]["median"], model["ttft_s"]["median"]
        if b_ttft and m_ttft:
            parts.append(f"first token after {m_ttft:.3f} s vs {b_ttft:.3f} s")
        if model["perplexity"] is not None and base["perplexity"] is not None:  # None: a remote model
            change = model["perplexity"] / base["perplexity"] - 1
            parts.append(
                f"held-out perplexity {model['perplexity']:.3f} vs {base['perplexity']:.3f} "
                f"({change:+.1%}, loss {model['heldout_loss'] - base['heldout_loss']:+.4f} nats/token)"
            )
        if model["file_size_mib"] is not None and base["file_size_mib"] is not None:
            parts.append(f"file {model['file_size_mib']:.0f} vs {base['file_size_mib']:.0f} MiB")
            parts.append(f"memory added {model['rss_model_mib']:.0f} vs {base['rss_model_mib']:.0f} MiB")
        lines.append(f"**{model['name']}** against **{base['name']}**: " + "; ".join(parts) + ".")
    return lines


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text.strip() or "(empty answer)").splitlines())


def render_markdown(report: dict[str, Any]) -> str:
    models = report["models"]
    names = [m["name"] for m in models]
    s = report["settings"]
    out = [
        "# lorabot eval report",
        "",
        f"{report['created']} · {report['machine']} · {s['threads']} llama.cpp threads · "
        f"context {s['context_length']}, "
        f"{s['kv_slots']} KV slots · greedy, at most {s['max_new_tokens']} new tokens · "
        f"{s['prompts']} prompts "
        f"({s['prompts_file']}) · {s['heldout_conversations']} held-out conversations ({s['heldout']})",
        "",
        "## Summary",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    out += [f"| {label} | " + " | ".join(cell(m) for m in models) + " |" for label, cell in ROWS]
    out += ["", "![tokens/s against held-out perplexity](tradeoff.png)", ""]
    if len(models) > 1:
        out += ["## Trade-off", "", *[f"- {line}" for line in tradeoff_lines(models)], ""]
    out += ["## Per model", ""]
    for model in models:
        out += [
            f"### {model['name']}",
            "",
            f"`{model['path']}`",
            "",
            "| prompt | TTFT (s) | decode tok/s | new tokens |",
            "|---|---|---|---|",
        ]
        for index, prompt in enumerate(report["prompts"]):
            timing = model["per_prompt"][index]
            cell = prompt.replace("|", "\\|")
            out.append(
                f"| {cell} | {_num(timing['ttft_s'], 3)} | {_num(timing['decode_tok_s'], 1)} | "
                f"{timing['tokens']} |"
            )
        out.append("")
    if report.get("judge"):
        judge = report["judge"]
        out += [
            f"## Judge: {judge['judge']}",
            "",
            "Each prompt is judged twice with the answers' positions swapped; "
            "a win needs both orders to agree, anything else is a tie.",
            "",
            "| model | vs | wins | losses | ties | win rate | first-position picks |",
            "|---|---|---|---|---|---|---|",
        ]
        for pair in judge["pairs"]:
            out.append(
                f"| {pair['model']} | {pair['other']} | {pair['wins']} | {pair['losses']} | {pair['ties']} | "
                f"{pair['win_rate']:.0%} of {pair['n']} | {pair['first_position_picks']} of {2 * pair['n']} |"
            )
        out.append("")
    out += ["## Answers", ""]
    for index, prompt in enumerate(report["prompts"]):
        out += [f"### {index + 1}. {prompt}", ""]
        for model in models:
            out += [f"**{model['name']}**", "", _quote(model["answers"][index]), ""]
    return "\n".join(out)


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report), encoding="utf-8")
    return md_path, json_path
