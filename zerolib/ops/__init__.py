"""Native ops with PyTorch fallbacks: CPU Adam and block quantization.

Each op JIT-builds on first use (see op_builder and docs/ops.md); when it cannot build, the
PyTorch reference runs instead after one NativeOpFallbackWarning.
"""
from zerolib.ops.adam import adam_step
from zerolib.ops.adam_reference import adam_step_reference
from zerolib.ops.cpu_adam import CPUAdam
from zerolib.ops.loader import NativeOpFallbackWarning, load_op
from zerolib.ops.quantize import QuantizedTensor, dequantize, dequantize_reduce, quantize, wire_nbytes, wire_sizes

__all__ = [
    "CPUAdam",
    "NativeOpFallbackWarning",
    "QuantizedTensor",
    "adam_step",
    "adam_step_reference",
    "dequantize",
    "dequantize_reduce",
    "load_op",
    "quantize",
    "wire_nbytes",
    "wire_sizes",
]
