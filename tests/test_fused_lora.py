"""The fused 4-bit LoRA step (model/fused_lora.py), one layer and stacked (model/stacked_lora.py), against PEFT's own
layers, on a real NF4 model.

The tiny LFM2 is loaded in 4-bit through transformers' real from_pretrained + BitsAndBytesConfig (on the CPU
here; tests/test_gpu.py trains with it on a GPU), wrapped by PEFT with saudial's LoraConfig, its LoRA
weights in bf16 as TRL leaves them. Each check compares the fused forward and backward with PEFT's, and
both with a float64 reference of the same math on the dequantized weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bitsandbytes as bnb
import pytest
import torch

from saudial.model import fused_lora, stacked_lora
from tests.models import lora_4bit_layers, peft_4bit

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("keep", [False, True], ids=["dequantized-each-use", "dequantized-once"])
@pytest.mark.parametrize("device", DEVICES)
def test_one_layer_is_as_exact_as_peft(tiny_model: Path, device: str, keep: bool) -> None:
    model = peft_4bit(tiny_model, device)
    layer = lora_4bit_layers(model)[-1]
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    scaling = layer.scaling["default"]
    weight = bnb.functional.dequantize_4bit(layer.base_layer.weight, layer.base_layer.weight.quant_state).double()
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(300, a.shape[1], generator=generator).to(device, torch.bfloat16)
    g = torch.randn(300, b.shape[0], generator=generator).to(device, torch.bfloat16)

    def run(forward: Any) -> list[torch.Tensor]:
        x = x0.clone().requires_grad_(True)
        a.grad = b.grad = None
        y = forward(x)
        y.backward(g)
        assert x.grad is not None and a.grad is not None and b.grad is not None
        return [t.detach().double() for t in (y, x.grad, a.grad, b.grad)]

    xd = x0.double().requires_grad_(True)
    ad, bd = a.detach().double().requires_grad_(True), b.detach().double().requires_grad_(True)
    yd = xd @ weight.t() + scaling * (xd @ ad.t()) @ bd.t()
    yd.backward(g.double())
    reference = [yd.detach(), xd.grad, ad.grad, bd.grad]

    peft = run(lambda x: type(layer).forward(layer, x))
    assert fused_lora.fuse(model) == len(lora_4bit_layers(model))
    if keep:
        assert fused_lora.keep_dequantized(model)[0] == len(lora_4bit_layers(model))
    fused = run(layer)
    assert (layer._saudial_frozen.dense is not None) == keep
    for name, ref, p, f in zip(["y", "dx", "dA", "dB"], reference, peft, fused, strict=True):
        assert ref is not None
        scale = ref.abs().max().item()
        peft_error, fused_error = ((t - ref).abs().max().item() / scale for t in (p, f))
        # Both round to bf16 in different places; the fused path may not be less exact than PEFT's.
        assert fused_error <= max(1.5 * peft_error, 2e-3), (name, peft_error, fused_error)


@pytest.mark.parametrize("keep", [False, True], ids=["dequantized-each-use", "dequantized-once"])
@pytest.mark.parametrize("device", DEVICES)
def test_model_loss_and_lora_gradients_match_peft(tiny_model: Path, device: str, keep: bool) -> None:
    """The whole model with every 4-bit LoRA layer fused, and with LFM2's kernel forwards on it, which run each
    feed-forward's w1 and w3, and each attention's q, k and v, as one stacked step (model/fast_lfm2.py; on the CPU
    in Triton's interpreter)."""
    model = peft_4bit(tiny_model, device)
    ids = torch.randint(3, model.config.vocab_size, (1, 160), generator=torch.Generator().manual_seed(2)).to(device)

    def step() -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss  # as training calls it
        loss.backward()
        grads = {n: p.grad.detach().float().flatten() for n, p in model.named_parameters() if p.requires_grad}
        return loss.item(), grads

    loss, grads = step()
    fused_lora.fuse(model)
    if keep:
        fused_lora.keep_dequantized(model)
    fused_loss, fused_grads = step()
    assert abs(fused_loss - loss) <= 2e-3 * abs(loss)
    assert len(grads) == 2 * len(lora_4bit_layers(model))
    for name, grad in grads.items():
        cosine = torch.nn.functional.cosine_similarity(grad, fused_grads[name], dim=0).item()
        assert cosine > 0.999, (name, cosine)

    from saudial.model import fast_lfm2, short_conv

    short_conv.install_boundary_aware_conv()
    fast_lfm2.install(model, cpu=device == "cpu")
    pairs = fast_lfm2.stacks(model)
    assert len(pairs) == model.config.num_hidden_layers
    if keep:
        for layer in lora_4bit_layers(model):
            fused_lora.forget(layer)
        fused_lora.keep_dequantized(model, pairs)
    outputs: list[torch.Tensor | None] = []
    stacked = stacked_lora.stacked
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stacked_lora, "stacked", lambda *a, **k: outputs.append(stacked(*a, **k)) or outputs[-1])
        kernel_loss, kernel_grads = step()
    attention = sum(1 for m in model.modules() if type(m).__name__ == "Lfm2Attention")
    assert attention > 0  # the tiny model has attention layers and short conv layers
    assert len(outputs) == len(pairs) + attention  # each feed-forward's w1, w3 and each attention's q, k, v
    assert all(out is not None for out in outputs)
    assert abs(kernel_loss - loss) <= 2e-3 * abs(loss)
    for name, grad in grads.items():
        cosine = torch.nn.functional.cosine_similarity(grad, kernel_grads[name], dim=0).item()
        assert cosine > 0.999, (name, cosine)


@pytest.mark.parametrize(
    ("keep", "split"), [(False, False), (True, False), (False, True)], ids=["w1w3", "w1w3-kept", "qkv-split"]
)
@pytest.mark.parametrize("device", DEVICES)
def test_stacked_layers_are_as_exact_as_peft(tiny_model: Path, device: str, keep: bool, split: bool) -> None:
    """Layers of one input as one stacked step (a feed-forward's w1 and w3, their outputs side by side; an
    attention's q, k and v, one output each): every output and gradient as exact as PEFT's layers against a
    float64 reference."""
    model = peft_4bit(tiny_model, device)
    if split:
        attention = next(m for m in model.modules() if type(m).__name__ == "Lfm2Attention")
        layers: tuple[Any, ...] = (attention.q_proj, attention.k_proj, attention.v_proj)
    else:
        mlp = model.base_model.model.model.layers[-1].feed_forward
        layers = (mlp.w1, mlp.w3)
    generator = torch.Generator().manual_seed(4)
    x0 = torch.randn(300, layers[0].in_features, generator=generator).to(device, torch.bfloat16)
    widths = [layer.out_features for layer in layers]
    g = torch.randn(300, sum(widths), generator=generator).to(device, torch.bfloat16)
    params = [p for layer in layers for p in (layer.lora_A["default"].weight, layer.lora_B["default"].weight)]

    def run(forward: Any) -> list[torch.Tensor]:
        x = x0.clone().requires_grad_(True)
        for p in params:
            p.grad = None
        y = forward(x)
        y.backward(g)
        assert x.grad is not None and all(p.grad is not None for p in params)
        return [t.detach().double() for t in (y, x.grad, *(p.grad for p in params))]  # type: ignore[misc]

    xd = x0.double().requires_grad_(True)
    refs = [p.detach().double().requires_grad_(True) for p in params]
    outs = []
    for layer, (a, b) in zip(layers, zip(refs[0::2], refs[1::2], strict=True), strict=True):
        weight = bnb.functional.dequantize_4bit(layer.base_layer.weight, layer.base_layer.weight.quant_state)
        outs.append(xd @ weight.double().t() + layer.scaling["default"] * (xd @ a.t()) @ b.t())
    yd = torch.cat(outs, dim=-1)
    yd.backward(g.double())
    reference = [yd.detach(), xd.grad, *(r.grad for r in refs)]

    peft = run(lambda x: torch.cat([type(layer).forward(layer, x) for layer in layers], dim=-1))
    fused_lora.fuse(model)
    assert stacked_lora.stacked(layers, x0.float(), split=split) is None  # not the compute dtype: one by one
    if keep:
        fused_lora.keep_dequantized(model, [layers])
        frozen = tuple(layer._saudial_frozen for layer in layers)
        stack = frozen[0].stack
        assert stack is not None and stack.shape == (sum(widths), layers[0].in_features)  # one tensor for both
        assert stacked_lora._kept_stack(frozen, torch.bfloat16) is stack
    if split:
        stacked = run(lambda x: torch.cat(stacked_lora.stacked(layers, x, split=True), dim=-1))
    else:
        stacked = run(lambda x: stacked_lora.stacked(layers, x))
    names = ["y", "dx", *(f"{kind}{i}" for i in range(len(layers)) for kind in ("dA", "dB"))]
    for name, ref, p, f in zip(names, reference, peft, stacked, strict=True):
        assert ref is not None
        scale = ref.abs().max().item()
        peft_error, fused_error = ((t - ref).abs().max().item() / scale for t in (p, f))
        assert fused_error <= max(1.5 * peft_error, 2e-3), (name, peft_error, fused_error)
    with model.disable_adapter():  # a call the fused step does not cover: not stacked
        assert stacked_lora.stacked(layers, x0) is None
    if split:  # an output that reaches no loss: its A and B get gradients of zeros, the others theirs
        x = x0.clone().requires_grad_(True)
        for p in params:
            p.grad = None
        query, _, value = stacked_lora.stacked(layers, x, split=True)
        (query.sum() + value.sum()).backward()
        grads = [p.grad for p in params]
        assert all(grad is not None and grad.any() == (i not in (2, 3)) for i, grad in enumerate(grads))


def test_what_the_function_does_not_cover_goes_to_peft(tiny_model: Path) -> None:
    fused_model = peft_4bit(tiny_model, "cpu")
    fused_lora.fuse(fused_model)
    layer = lora_4bit_layers(fused_model)[0]
    x = torch.randn(5, layer.in_features, dtype=torch.bfloat16, requires_grad=True)
    assert type(layer(x).grad_fn).__name__ == "_QLoRALinearBackward"
    with fused_model.disable_adapter():  # PEFT's path: the base layer alone
        assert torch.equal(layer(x), layer.base_layer(x))
    assert type(layer(x.float()).grad_fn).__name__ != "_QLoRALinearBackward"  # not the compute dtype

    dropout_model = peft_4bit(tiny_model, "cpu", lora_dropout=0.1)
    fused_lora.fuse(dropout_model)
    output = lora_4bit_layers(dropout_model)[0](x)
    assert type(output.grad_fn).__name__ != "_QLoRALinearBackward"  # dropout: PEFT's own forward


def test_cached_scales_are_bitsandbytes_own(tiny_model: Path) -> None:
    """The scales dequantized once are the ones bitsandbytes computes on every call (the watch on its
    double-quantization formula), and the fused layer's frozen part is bitsandbytes' 4-bit matmul exactly."""
    model = peft_4bit(tiny_model, "cpu")
    fused_lora.fuse(model)
    generator = torch.Generator().manual_seed(3)
    for layer in lora_4bit_layers(model):
        weight = layer.base_layer.weight
        assert weight.quant_state.nested  # saudial's default: QLoRA's double quantization
        dequantized = bnb.functional.dequantize_4bit(weight, weight.quant_state)
        scales = fused_lora.block_scales(weight.quant_state)
        assert scales.dtype == torch.float32
        mine = fused_lora._dequantize(weight, weight.quant_state, scales, dequantized.dtype)
        assert torch.equal(mine, dequantized)

        layer.lora_B["default"].weight.data.zero_()  # the LoRA update adds nothing: the base alone
        x = torch.randn(7, layer.in_features, generator=generator).to(torch.bfloat16).requires_grad_(True)
        fused = layer(x)
        assert type(fused.grad_fn).__name__ == "_QLoRALinearBackward"
        assert torch.equal(fused, bnb.matmul_4bit(x, weight.t(), quant_state=weight.quant_state))
        frozen = layer._saudial_frozen
        assert frozen.absmax is weight.quant_state.absmax and frozen.dense is None  # cached, and for this weight
    # Dequantized once: bitsandbytes' values bit for bit, and the layer computes with them.
    layers, size = fused_lora.keep_dequantized(model)
    assert layers == len(lora_4bit_layers(model))
    assert size == sum(2 * layer.in_features * layer.out_features for layer in lora_4bit_layers(model))
    for layer in lora_4bit_layers(model):
        weight = layer.base_layer.weight
        dense = layer._saudial_frozen.dense
        assert dense.dtype == torch.bfloat16
        assert torch.equal(dense, bnb.functional.dequantize_4bit(weight, weight.quant_state))
        x = torch.randn(7, layer.in_features, generator=generator).to(torch.bfloat16)
        assert torch.equal(layer(x), bnb.matmul_4bit(x, weight.t(), quant_state=weight.quant_state))
