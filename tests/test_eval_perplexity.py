"""Held-out perplexity from the GGUF (llama.cpp) against transformers on the same tokens.

Tolerance: |loss_llama.cpp - loss_transformers| ≤ 0.05 nats/token (perplexities within ~5%).
transformers loads the GGUF's Q4_1 weights dequantized to fp32, i.e. the very same weight values;
what still differs is arithmetic: llama.cpp quantizes activations to 8 bits for its Q4_1 dot
products and keeps the KV cache in f16. Measured on the held-out split that moves the mean loss by
about 0.012 nats (ppl 8.81 vs 8.70 on 20 conversations, +1.2%), so 0.05 leaves room for other CPUs'
kernels while a real mistake (a shifted mask, scoring user turns, a wrong template) moves it by
tenths of a nat or more.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.evaluate.inputs import load_heldout
from training.evaluate.perplexity import ChatTemplate, gguf_perplexity, score_tokens, token_nll

pytestmark = pytest.mark.slow
TOLERANCE_NATS = 0.05
CONVERSATIONS = 6


@pytest.fixture(scope="module")
def tokenizer_llm(embedded_gguf):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(embedded_gguf), vocab_only=True, verbose=False)
    yield llm
    llm.close()


def test_only_assistant_replies_are_scored(tokenizer_llm):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]
    tokens, mask = score_tokens(tokenizer_llm, ChatTemplate(tokenizer_llm), messages)
    scored = tokenizer_llm.detokenize(
        [t for t, m in zip(tokens, mask, strict=True) if m], special=True
    ).decode()
    assert scored == "Hello! How can I help?<|im_end|>\nBlue.<|im_end|>\n"
    whole = tokenizer_llm.detokenize(tokens, special=True).decode()
    assert whole.startswith("<|im_start|>system\nBe brief.<|im_end|>") and whole.endswith("Blue.<|im_end|>\n")


def test_embedded_perplexity_is_finite_and_agrees_with_transformers(embedded_gguf, tokenizer_llm):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from training.base_model import resolve_base

    heldout = load_heldout(limit=CONVERSATIONS)
    result = gguf_perplexity(embedded_gguf, heldout, threads=1, n_ctx=1024, progress=False)
    assert math.isfinite(result.loss) and 1.0 < result.perplexity < 100.0
    assert result.conversations == CONVERSATIONS and result.tokens > 50 and result.truncated == 0

    # The same dequantized weights in transformers (the trainer's cached fp32 checkpoint of the GGUF).
    model = transformers.AutoModelForCausalLM.from_pretrained(
        resolve_base("embedded"), dtype=torch.float32
    ).eval()
    template = ChatTemplate(tokenizer_llm)
    nll = []
    with torch.inference_mode():
        for messages in heldout:
            tokens, mask = score_tokens(tokenizer_llm, template, messages)
            logits = model(torch.tensor([tokens])).logits[0].float().numpy()
            nll.append(token_nll(logits, tokens, mask))
    reference = np.concatenate(nll)
    assert reference.size == result.tokens
    assert abs(result.loss - float(reference.mean())) <= TOLERANCE_NATS, (
        result.loss,
        float(reference.mean()),
    )
