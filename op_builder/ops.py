"""One builder per native op."""
from __future__ import annotations

from op_builder.builder import OpBuilder


class CPUAdamBuilder(OpBuilder):
    """Adam/AdamW over lists of flat fp32 tensors (fp32/bf16/fp16 grads, optional 16-bit outputs)."""

    op_name = "cpu_adam"
    sources = ("adam/cpu_adam.cpp",)


class QuantizerBuilder(OpBuilder):
    """Block-wise int8/int4 quantize, dequantize and fused dequantize-reduce on the CPU."""

    op_name = "quantizer"
    sources = ("quantization/quantize.cpp",)


class AdamMemoryCeilingBuilder(OpBuilder):
    """Benchmark-only: a kernel with Adam's memory traffic (4 fp32 reads, 3 writes) and no math.

    Built with exactly the flags of CPU Adam so that the benchmark's ceiling is a fair one.
    """

    op_name = "adam_memory_ceiling"
    sources = ("adam/memory_ceiling.cpp",)


class CUDAQuantizerBuilder(OpBuilder):
    """The quantizer's CUDA kernels (same op names and arguments as the CPU ones)."""

    op_name = "quantizer_cuda"
    sources = ("quantization/quantize_cuda.cpp", "quantization/quantize_cuda.cu")
    uses_cpu_simd = False

    def cxx_flags(self) -> list[str]:
        return [flag for flag in super().cxx_flags() if flag != "-fopenmp"]

    def cuda_flags(self) -> list[str]:
        return ["-O3", "--use_fast_math", f"-DZEROLIB_OP_NS={self.extension_name}"]

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
