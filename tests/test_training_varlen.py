"""The varlen-attention switch (`varlen_attention`, unsloth backend) on a CPU: it must never leave
Unsloth half-patched. A stand-in for Unsloth's dispatch module is used; the real kernel and its
self-check run on CUDA only (docs/benchmarks.md, Training (GPU))."""

from __future__ import annotations

import sys
import types

import pytest

pytest.importorskip("torch")

from training.backends.unsloth_backend import use_torch_varlen  # noqa: E402
from training.config import build_config  # noqa: E402


def fake_dispatch(monkeypatch, varlen=None, broken=True) -> types.ModuleType:
    """A module shaped like unsloth.utils.attention_dispatch (2026.10) on torch < 2.12."""
    dispatch = types.ModuleType("unsloth.utils.attention_dispatch")
    dispatch._TORCH_VARLEN_ATTN = varlen
    dispatch._LEAN_VARLEN = False
    dispatch._LeanFlashVarlen = object
    dispatch._torch_varlen_takes = lambda *args, **kwargs: True

    def packed(*args, **kwargs):
        raise RuntimeError("no flash kernel here") if broken else None

    dispatch._torch_varlen_packed = packed
    utils = types.ModuleType("unsloth.utils")
    utils.attention_dispatch = dispatch
    monkeypatch.setitem(sys.modules, "unsloth", types.ModuleType("unsloth"))
    monkeypatch.setitem(sys.modules, "unsloth.utils", utils)
    monkeypatch.setitem(sys.modules, "unsloth.utils.attention_dispatch", dispatch)
    return dispatch


def test_a_failed_self_check_restores_unsloths_own_path(monkeypatch):
    pytest.importorskip("torch.nn.attention.varlen")
    dispatch = fake_dispatch(monkeypatch)
    status = use_torch_varlen()
    assert status.startswith("off: self-check failed")
    assert dispatch._TORCH_VARLEN_ATTN is None and dispatch._LEAN_VARLEN is False
    assert getattr(dispatch, "_varlen_can_use_cudnn", None) is None


def test_unsloth_with_its_own_varlen_is_left_alone(monkeypatch):
    own = object()
    dispatch = fake_dispatch(monkeypatch, varlen=own)
    assert use_torch_varlen() == "already on (Unsloth's own)" and dispatch._TORCH_VARLEN_ATTN is own


def test_other_unsloth_internals_are_reported_not_patched(monkeypatch):
    pytest.importorskip("torch.nn.attention.varlen")
    dispatch = fake_dispatch(monkeypatch)
    monkeypatch.delattr(dispatch, "_LeanFlashVarlen")
    assert use_torch_varlen().startswith("not available") and dispatch._TORCH_VARLEN_ATTN is None


def test_the_setting_is_off_unless_a_preset_asks():
    assert build_config("baseline").varlen_attention is False
    assert build_config("baseline", varlen_attention=True).varlen_attention is True
