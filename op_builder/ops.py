"""One builder per native op (see builder.py for the binding / kernel-library split)."""
from __future__ import annotations

from op_builder.builder import CSRC_DIR, OpBuilder


class CPUAdamBuilder(OpBuilder):
    """Adam/AdamW over lists of flat fp32 tensors (fp32/bf16/fp16 grads, optional 16-bit outputs)."""

    op_name = "cpu_adam"
    binding_sources = ("adam/cpu_adam.cpp",)
    kernel_sources = ("adam/adam_kernels.cpp",)


class QuantizerBuilder(OpBuilder):
    """Block-wise int8/int4 quantize, dequantize and fused dequantize-reduce on the CPU."""

    op_name = "quantizer"
    binding_sources = ("quantization/quantize.cpp",)
    kernel_sources = ("quantization/quantize_kernels.cpp",)


class AdamMemoryCeilingBuilder(OpBuilder):
    """Benchmark-only: a kernel with Adam's memory traffic (4 fp32 reads, 3 writes) and no math.

    Built with exactly CPU Adam's kernel flags so that the benchmark's ceiling is a fair one.
    """

    op_name = "adam_memory_ceiling"
    kernel_sources = ("adam/memory_ceiling.cpp",)


class CUDAQuantizerBuilder(OpBuilder):
    """The quantizer's CUDA kernels: same op names and arguments as the CPU binding, minus the
    kernel table (CUDA code has no CPU SIMD path)."""

    op_name = "quantizer_cuda"
    binding_sources = ("quantization/quantize_cuda.cpp", "quantization/quantize_cuda.cu")
    uses_cpu_simd = False

    def cuda_flags(self) -> list[str]:
        return ["-O3", f"-I{CSRC_DIR / 'includes'}"]

    def incompatibility(self) -> str | None:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME

        if torch.version.cuda is None:
            return f"torch {torch.__version__} is a CPU-only build"
        if CUDA_HOME is None:
            return "no CUDA toolkit found (set CUDA_HOME)"
        if not torch.cuda.is_available():
            return "no CUDA device is visible"
        return super().incompatibility()


# The ops the library uses (the benchmark-only ceiling kernel is not prebuilt).
LIBRARY_BUILDERS = (CPUAdamBuilder, QuantizerBuilder, CUDAQuantizerBuilder)
