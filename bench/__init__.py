"""Benchmarks: `lorabot bench engine`, `lorabot bench train`. Each prints a table (or --json)
with ratios against a baseline measured in the same run."""
