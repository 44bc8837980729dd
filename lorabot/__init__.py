"""The `lorabot` command: one root (`lorabot.cli`) that mounts each part's commands.

serve.py: chat, run and one command per platform (bots) · models.py: the registry (core) ·
bench.py: benchmarks · training and evaluation commands come from `training/`. Nothing in
`bots/`, `core/` or `training/` imports this package, so imports keep running one way.
"""
