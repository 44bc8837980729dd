"""The model-making half of lorabot: preset → dataset → LoRA fine-tune → merge → GGUF → registry.

Nothing here imports torch/transformers at module import time, so `lorabot --help` stays fast
and the bot runs without the `train` extra. Heavy imports live inside the functions that need them.
"""
