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
    "llama-3.1": (
        "<|start_header_id|>user<|end_header_id|>\n\n",
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "chatml": ("<|im_start|>user\n", "<|im_start|>assistant\n"),
}


def template_family(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", "") or ""
    if "<|start_header_id|>" in template:
        return "llama-3.1"
    if "<|im_start|>" in template:
        return "chatml"
    return None


def _varlen_shim(
    query: Any,
    key: Any,
    value: Any,
    cu_q: Any,
    cu_k: Any,
    max_q: int,
    max_k: int,
    *,
    scale: float | None = None,
    window_size: tuple[int, int] = (-1, -1),
    enable_gqa: bool = False,
) -> Any:
    """torch < 2.12's `varlen_attn` under the 2.12 signature Unsloth asks for. `enable_gqa` is only
    a flag there: the flash kernel takes fewer K/V heads than Q heads as they are."""
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn(
        query, key, value, cu_q, cu_k, max_q, max_k, scale=scale, window_size=tuple(window_size)
    )


def _varlen_matches_segments(dispatch: Any) -> bool:
    """One small packed GQA row through Unsloth's varlen path against plain SDPA per document
    (outputs and input gradients): the patch is kept only where it computes the same function."""
    import torch
    import torch.nn.functional as F

    lengths, heads, kv_heads, dim = [37, 5, 64, 1, 21], 8, 2, 64
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(
            1, h, sum(lengths), dim, device="cuda", dtype=torch.bfloat16, generator=gen, requires_grad=True
        )
        for h in (heads, kv_heads, kv_heads)
    )
    seq_info = (
        torch.tensor(lengths, dtype=torch.int32, device="cuda"),
        torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda"),
        max(lengths),
    )
    out = dispatch._torch_varlen_packed(
        q, k, v, seq_info, n_groups=heads // kv_heads, is_causal=True, sliding_window=None, scale=None
    )  # (1, T, H, D)
    refs, start = [], 0
    for n in lengths:
        part = [x[:, :, start : start + n].float() for x in (q, k, v)]
        refs.append(F.scaled_dot_product_attention(*part, is_causal=True, enable_gqa=True).transpose(1, 2))
        start += n
    ref = torch.cat(refs, dim=1)
    grads = torch.autograd.grad((out.float() * ref.detach()).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * ref.detach()).sum(), (q, k, v))
    pairs = [(out.detach(), ref.detach()), *zip(grads, ref_grads, strict=False)]
    close = [float((a.float() - b.float()).norm() / b.float().norm()) for a, b in pairs]
    return max(close) < 2e-2


def use_torch_varlen() -> str:
    """Let Unsloth's padding-free path run attention once per layer through torch's varlen flash kernel.

    Unsloth 2026.10 takes that kernel only from torch 2.12 (it wants `varlen_attn(enable_gqa=)`);
    before, it runs SDPA once per run of equal-length documents, ~15-30 calls per layer per step,
    and that host time dominated a packed step on an H200 (docs/benchmarks.md). Returns what was
    done; leaves Unsloth as it is when its internals differ or the self-check fails."""

    try:
        from torch.nn.attention import varlen as torch_varlen
        from unsloth.utils import attention_dispatch as dispatch
    except ImportError as error:
        return f"not available ({error})"
    if dispatch._TORCH_VARLEN_ATTN is not None:
        return "already on (Unsloth's own)"
    needed = ("_LEAN_VARLEN", "_torch_varlen_packed", "_LeanFlashVarlen", "_torch_varlen_takes")
    if not all(hasattr(dispatch, name) for name in needed) or not hasattr(torch_varlen, "varlen_attn"):
        return "not available (Unsloth or torch internals differ)"
    saved = {
        name: getattr(dispatch, name, None)
        for name in ("_TORCH_VARLEN_ATTN", "_LEAN_VARLEN", "_varlen_can_use_cudnn")
    }
    dispatch._TORCH_VARLEN_ATTN = _varlen_shim
    dispatch._LEAN_VARLEN = True  # eager calls: aten's flash varlen kernels, no custom-op dispatch
    dispatch._varlen_can_use_cudnn = lambda *args, **kwargs: False  # torch < 2.12 varlen is flash only
    why = "outputs differ from per-document SDPA"
    try:
        ok = _varlen_matches_segments(dispatch)
    except Exception as error:  # noqa: BLE001  (any failure: keep Unsloth's own path)
        ok, why = False, f"{type(error).__name__}: {error}"
    if not ok:
        for name, value in saved.items():
            setattr(dispatch, name, value)
        return f"off: self-check failed ({why})"
    return "on (checked against per-document SDPA)"


class UnslothBackend:
    name = "unsloth"

    def __init__(self) -> None:
        import unsloth  # noqa: F401  (must come before transformers/trl/peft are used: it patches them)

    def load(self, cfg: TrainConfig, hw: Hardware, base: Path | str, dtype: str) -> tuple[Any, Any]:
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=str(base),
            max_seq_length=cfg.max_seq_length,
            dtype=torch_dtype(dtype),
            load_in_4bit=cfg.load_in_4bit,
        )
        if cfg.chat_template != "model":
            try:
                from unsloth.chat_templates import get_chat_template

                tokenizer = get_chat_template(tokenizer, chat_template=cfg.chat_template)
            except Exception as error:  # a tokenizer without that family's special tokens (random bases)
                log.warning(
                    "unsloth get_chat_template(%s) failed (%s); using lorabot's copy",
                    cfg.chat_template,
                    error,
                )
                set_chat_template(tokenizer, cfg.chat_template)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer

    def add_lora(self, model: Any, cfg: TrainConfig) -> Any:
        from unsloth import FastLanguageModel

        return FastLanguageModel.get_peft_model(
            model,
            r=cfg.lora_r,
            target_modules=cfg.target_modules,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            bias=cfg.bias,
            use_gradient_checkpointing=cfg.gradient_checkpointing,
            random_state=cfg.seed,
            use_rslora=False,
            loftq_config=None,
            max_seq_length=cfg.max_seq_length,
        )

    def trainer(self, model: Any, tokenizer: Any, args: Any, train_ds: Any, eval_ds: Any) -> Any:
        from trl import SFTTrainer

        trainer = SFTTrainer(
            model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer
        )
        family = template_family(tokenizer)
        if args.packing or family is None:
            return trainer  # packed rows: lorabot's labels already mask all but the replies
        from unsloth.chat_templates import train_on_responses_only

        ours = [
            list(row["labels"])
            for row in trainer.train_dataset.select(range(min(32, len(trainer.train_dataset))))
        ]
        instruction, response = RESPONSE_PARTS[family]
        try:
            trainer = train_on_responses_only(trainer, instruction_part=instruction, response_part=response)
        except ValueError as error:  # markers not tokenized alike in context (a foreign tokenizer)
            log.warning(
                "train_on_responses_only could not find the markers (%s); keeping lorabot's labels", error
            )
            return trainer
        theirs = [list(row["labels"]) for row in trainer.train_dataset.select(range(len(ours)))]
        same = sum(a == b for a, b in zip(ours, theirs, strict=False))
        log.warning("train_on_responses_only: labels identical to lorabot's on %d/%d rows", same, len(ours))
        return trainer

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
        """Unsloth's documented recipe: `PatchDPOTrainer()` / `PatchKTOTrainer()` (no-ops in recent
        Unsloth, which patches trl's trainers when imported), its LoRA, then trl's trainer with
        `ref_model=None` so the reference is the same model with the LoRA off."""
        import unsloth

        patch = getattr(unsloth, "PatchKTOTrainer" if method == "kto" else "PatchDPOTrainer", None)
        if patch is not None:
            patch()
        from training.preference import trainer_class

        return trainer_class(method)(
            model=self.add_lora(model, cfg),
            ref_model=None,
            args=args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tokenizer,
        )
