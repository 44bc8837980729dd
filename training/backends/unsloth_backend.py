"""Unsloth on CUDA: the original notebook's path (FastLanguageModel, get_peft_model, its chat
templates and train_on_responses_only), fed the same tokenized rows as the hf backend."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from training.chat_format import set_chat_template
from training.config import TrainConfig
from training.hardware import Hardware, torch_dtype

log = logging.getLogger(__name__)

# Markers that `train_on_responses_only` searches for, by chat-template family.
RESPONSE_PARTS = {
    "llama-3.1": ("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "chatml": ("<|im_start|>user\n", "<|im_start|>assistant\n"),
}


def template_family(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", "") or ""
    if "<|start_header_id|>" in template:
        return "llama-3.1"
    if "<|im_start|>" in template:
        return "chatml"
    return None


class UnslothBackend:
    name = "unsloth"

    def __init__(self) -> None:
        import unsloth  # noqa: F401  (must come before transformers/trl/peft are used: it patches them)

    def load(self, cfg: TrainConfig, hw: Hardware, base: Path | str, dtype: str) -> tuple[Any, Any]:
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=str(base), max_seq_length=cfg.max_seq_length,
            dtype=torch_dtype(dtype), load_in_4bit=cfg.load_in_4bit,
        )
        if cfg.chat_template != "model":
            try:
                from unsloth.chat_templates import get_chat_template

                tokenizer = get_chat_template(tokenizer, chat_template=cfg.chat_template)
            except Exception as error:  # a tokenizer without that family's special tokens (random bases)
                log.warning("unsloth get_chat_template(%s) failed (%s); using lorabot's copy", cfg.chat_template, error)
                set_chat_template(tokenizer, cfg.chat_template)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer

    def add_lora(self, model: Any, cfg: TrainConfig) -> Any:
        from unsloth import FastLanguageModel

        return FastLanguageModel.get_peft_model(
            model, r=cfg.lora_r, target_modules=cfg.target_modules, lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout, bias=cfg.bias, use_gradient_checkpointing=cfg.gradient_checkpointing,
            random_state=cfg.seed, use_rslora=False, loftq_config=None, max_seq_length=cfg.max_seq_length,
        )

    def trainer(self, model: Any, tokenizer: Any, args: Any, train_ds: Any, eval_ds: Any) -> Any:
        from trl import SFTTrainer

        trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer)
        family = template_family(tokenizer)
        if args.packing or family is None:
            return trainer  # packed rows: lorabot's labels already mask all but the replies
        from unsloth.chat_templates import train_on_responses_only

        ours = [list(row["labels"]) for row in trainer.train_dataset.select(range(min(32, len(trainer.train_dataset))))]
        instruction, response = RESPONSE_PARTS[family]
        try:
            trainer = train_on_responses_only(trainer, instruction_part=instruction, response_part=response)
        except ValueError as error:  # markers not tokenized alike in context (a foreign tokenizer)
            log.warning("train_on_responses_only could not find the markers (%s); keeping lorabot's labels", error)
            return trainer
        theirs = [list(row["labels"]) for row in trainer.train_dataset.select(range(len(ours)))]
        same = sum(a == b for a, b in zip(ours, theirs))
        log.warning("train_on_responses_only: labels identical to lorabot's on %d/%d rows", same, len(ours))
        return trainer
