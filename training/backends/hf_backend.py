"""transformers + peft + trl: the backend for CPUs and for GPUs without Unsloth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.base_model import load_model, load_tokenizer
from training.config import TrainConfig
from training.hardware import Hardware


class HFBackend:
    name = "hf"

    def load(self, cfg: TrainConfig, hw: Hardware, base: Path | str, dtype: str) -> tuple[Any, Any]:
        tokenizer = load_tokenizer(base, cfg.chat_template)
        model = load_model(base, dtype, load_in_4bit=cfg.load_in_4bit, device="cuda" if hw.cuda else "cpu")
        if cfg.load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=bool(cfg.gradient_checkpointing)
            )
        return model, tokenizer

    @staticmethod
    def lora_config(cfg: TrainConfig) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.target_modules,
            bias=cfg.bias,
            task_type="CAUSAL_LM",
        )

    def add_lora(self, model: Any, cfg: TrainConfig) -> Any:
        from peft import get_peft_model

        if cfg.gradient_checkpointing:  # "unsloth" means "on" here: plain (non-offloaded) checkpointing
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        return get_peft_model(model, self.lora_config(cfg))

    def trainer(self, model: Any, tokenizer: Any, args: Any, train_ds: Any, eval_ds: Any) -> Any:
        from trl import SFTTrainer

        return SFTTrainer(
            model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer
        )

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
        """trl wraps the model with the LoRA itself (`peft_config=`): then it keeps no reference copy
        and no second adapter, and computes the reference log-probs with the adapter disabled. (A
        model passed already wrapped gets a frozen "ref" copy of its adapter instead.)"""
        from training.preference import trainer_class

        return trainer_class(method)(
            model=model,
            ref_model=None,
            args=args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tokenizer,
            peft_config=self.lora_config(cfg),
        )
