"""Two ways to run the same LoRA fine-tune behind one small interface.

- `unsloth`: Unsloth's FastLanguageModel / get_peft_model / chat templates / train_on_responses_only
  (CUDA only; its import patches transformers, so it is imported first and only when chosen).
- `hf`: plain transformers + peft + trl; runs anywhere, including CPUs.

Both get the same tokenized rows (`training.chat_format`) and the same `SFTConfig`
(`training.sft_args`), so their loss is the same function of the same data. For KTO/DPO both hand
trl the same checked rows (`training.preference_data`) and the same `KTOConfig`/`DPOConfig`
(`training.preference`); the reference model is the policy with its LoRA switched off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from training.config import TrainConfig
from training.hardware import Hardware


class Backend(Protocol):
    name: str

    def load(self, cfg: TrainConfig, hw: Hardware, base: Path | str, dtype: str) -> tuple[Any, Any]:
        """(model, tokenizer) with the configured chat template installed."""

    def add_lora(self, model: Any, cfg: TrainConfig) -> Any:
        """The model wrapped with LoRA adapters on `cfg.target_modules`."""

    def trainer(self, model: Any, tokenizer: Any, args: Any, train_ds: Any, eval_ds: Any) -> Any:
        """A trl `SFTTrainer` (Unsloth's patched one for the unsloth backend)."""

    def preference_trainer(
        self,
        method: str,
        model: Any,
        tokenizer: Any,
        args: Any,
        train_ds: Any,
        eval_ds: Any,
        cfg: TrainConfig,
    ) -> Any:
        """A trl `KTOTrainer`/`DPOTrainer` (Unsloth-patched on the unsloth backend) training a LoRA on
        `model` (as loaded, without one) against the same model with the LoRA off."""


def get_backend(name: str) -> Backend:
    if name == "unsloth":
        from training.backends.unsloth_backend import UnslothBackend

        return UnslothBackend()
    from training.backends.hf_backend import HFBackend

    return HFBackend()
