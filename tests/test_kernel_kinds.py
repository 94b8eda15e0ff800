"""bench/kernel_kinds.py: the step profile's busy time by kind of kernel, from which #28's element-wise share is
read. The names are kernels an H100 profile of the defaults reported (bench/results-2026-12-07-h100-qkrope.json)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import kernel_kinds

REPO = Path(__file__).resolve().parent.parent


def test_every_triton_kernel_saudial_defines_counts_as_its_own() -> None:
    # Read from the sources here, apart from the module's discovery: a kernel added anywhere in saudial/ must be found
    defined = {
        name
        for path in (REPO / "saudial").rglob("*.py")
        for name in re.findall(r"@triton\.jit\s*\ndef (\w+)", path.read_text(encoding="utf-8"))
    }
    assert {"_swiglu_bwd", "_qk_fwd", "_conv_fwd"} <= defined
    assert kernel_kinds.triton_kernels() == defined
    assert {kernel_kinds.kind(name) for name in defined} == {kernel_kinds.TRITON}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("nvjet_sm90_tst_192x192_64x3_1x2_h_badd_coopB_NNN", "matrix multiplies"),
        ("nvjet_sm90_tst_64x32_64x16_2x1_v_bz_splitK_NTT", "matrix multiplies"),
        ("void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16>", "matrix multiplies"),
        ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits>", "attention"),
        ("Memset (Device)", "memsets and copies"),
        ("Memcpy HtoD (Pinned -> Device)", "memsets and copies"),
        (
            "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor<float, 4>>",
            "optimizer step (AdamW, the gradient norm)",
        ),
        ("void kDequantizeBlockwise<__nv_bfloat16, 512, 64, 8, 2>", "dequantize"),
        ("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl>", kernel_kinds.OTHER),
        ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<float, 4>", kernel_kinds.OTHER),
        ("_swiglu_bwd", kernel_kinds.TRITON),
        ("_qk_bwd", kernel_kinds.TRITON),
    ],
)
def test_a_kernel_is_told_by_its_name(name: str, expected: str) -> None:
    assert kernel_kinds.kind(name) == expected


def test_the_report_gives_each_kinds_share_and_the_element_wise_sum() -> None:
    kernels = [
        ("nvjet_sm90_tst_192x192_64x3_1x2_h_badd_coopB_NNN", 6_000.0),
        ("_swiglu_bwd", 1_000.0),
        ("_swiglu_fwd", 500.0),
        ("void at::native::elementwise_kernel<128, 4>", 1_500.0),
        ("void pytorch_flash::flash_fwd_kernel<>", 1_000.0),
    ]
    totals = kernel_kinds.shares(kernels)
    assert totals == {
        "matrix multiplies": 6_000.0,
        kernel_kinds.OTHER: 1_500.0,
        kernel_kinds.TRITON: 1_500.0,
        "attention": 1_000.0,
    }
    text = kernel_kinds.report(kernels, steps=2)
    assert "   3.00   60.0%  matrix multiplies" in text  # 6 ms over 2 steps, of 10 ms busy
    assert text.rstrip().endswith("30.0% of GPU busy time")  # Triton 1.5 + PyTorch's 1.5 of 10


def test_a_profile_without_gpu_kernels_reports_no_shares() -> None:
    assert kernel_kinds.report([], steps=3) == ""
