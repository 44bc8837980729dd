"""`lorabot eval`: compare registered GGUF models on the CPU that will serve them.

speed.py (through the core) · perplexity.py (from the GGUF) · answers.py (fixed prompts) ·
judge.py (pairwise, positions swapped) · report.py / plot.py (what the user reads) ·
runner.py ties them together · cli.py is the Typer entry point.
"""
