"""zerolib: ZeRO memory optimizations for PyTorch training."""
