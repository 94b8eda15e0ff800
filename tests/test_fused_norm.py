"""The fused RMSNorm (model/patches.use_fused_rms_norm) against LFM2's own `Lfm2RMSNorm`, in a real model.

The tiny LFM2 is loaded through the real from_pretrained; the loss and every parameter's gradient are
computed with transformers' norms, then with the fused ones. On the CPU PyTorch's `rms_norm` is a
composite of the same operations, so they must be equal bit for bit; this is also the watch on upstream:
if transformers changes what `Lfm2RMSNorm` computes (an offset on the weight, another eps, a dtype), the
CPU case fails and the patch must follow. On CUDA the fused kernel sums in another order.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.models.lfm2.modeling_lfm2 import Lfm2RMSNorm

from saudial.model import patches

CASES = [
    ("cpu", torch.float32),
    ("cpu", torch.bfloat16),
    pytest.param("cuda", torch.bfloat16, marks=pytest.mark.gpu),
]


def _loss_and_grads(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("device", "dtype"), CASES)
def test_fused_rms_norm_computes_what_lfm2s_norm_does(tiny_model: Path, device: str, dtype: torch.dtype) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype, device_map=device).train()
    generator = torch.Generator().manual_seed(0)
    for norm in (m for m in model.modules() if isinstance(m, Lfm2RMSNorm)):  # weights away from their init of 1
        norm.weight.data = (1 + 0.2 * torch.randn(norm.weight.shape, generator=generator)).to(norm.weight)
    ids = torch.randint(3, model.config.vocab_size, (2, 48), generator=generator).to(device)
    expected_loss, expected = _loss_and_grads(model, ids)

    count = patches.use_fused_rms_norm(model)
    norms = [m for m in model.modules() if isinstance(m, Lfm2RMSNorm)]
    assert count == len(norms) > 0
    assert all(norm.forward.__func__ is patches.fused_rms_norm for norm in norms)  # type: ignore[attr-defined]
    loss, grads = _loss_and_grads(model, ids)

    assert grads.keys() == expected.keys()
    if device == "cpu":
        assert torch.equal(loss, expected_loss)
        assert all(torch.equal(grads[n], expected[n]) for n in grads), "the fused norm's gradients differ"
    else:
        assert torch.allclose(loss.float(), expected_loss.float(), rtol=2e-3)
        for name, grad in grads.items():
            cosine = torch.nn.functional.cosine_similarity(grad.flatten().float(), expected[name].flatten().float(), 0)
            assert cosine > 0.999, f"{name}: cosine {cosine:.5f}"


def test_fused_rms_norm_keeps_the_input_dtype() -> None:
    norm = Lfm2RMSNorm(16, eps=1e-5).to(torch.bfloat16)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    assert patches.fused_rms_norm(norm, x).dtype == torch.bfloat16
    assert torch.equal(patches.fused_rms_norm(norm, x), norm(x))


@pytest.mark.parametrize("fused", [True, False])
def test_the_trainer_fuses_the_norms_as_set(tiny_model: Path, tmp_path: Path, fused: bool) -> None:
    """run/trainer.build_trainer (the real SFTTrainer) gives the norms the fused forward only when the setting asks."""
    import datasets
    from transformers import AutoTokenizer

    from saudial.config.settings import Settings
    from saudial.training.trainer import build_trainer

    settings = Settings(
        model_name_or_path=str(tiny_model), quantization="none", output_dir=tmp_path, fused_rms_norm=fused
    )
    data = datasets.Dataset.from_list([{"prompt": "a b", "completion": " c"}] * 4)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    trainer = build_trainer(settings, model, AutoTokenizer.from_pretrained(tiny_model), data, data, torch.float32)
    assert trainer.model is not None
    norms = [m for m in trainer.model.modules() if isinstance(m, Lfm2RMSNorm)]
    assert norms
    patched = [getattr(norm.forward, "__func__", None) is patches.fused_rms_norm for norm in norms]
    assert all(patched) if fused else not any(patched)
