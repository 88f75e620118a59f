"""Install zerolib. Set ZEROLIB_BUILD_OPS=1 to compile the native ops at install time."""
import os

from setuptools import find_packages, setup

if os.environ.get("ZEROLIB_BUILD_OPS") == "1":
    # Prebuild into the JIT cache so that the first training step does not pay for compilation.
    from op_builder import prebuild_all

    prebuild_all()

setup(
    name="zerolib",
    version="0.1.0",
    description="ZeRO memory optimizations (stages 1-3, offload, ZeRO++) for PyTorch",
    packages=find_packages(include=["zerolib", "zerolib.*", "op_builder", "op_builder.*"]),
    package_data={"": ["../csrc/**/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    # torch is pinned at most to the CPU wheel this project tests with: a range admitting newer
    # releases makes pip fetch a multi-GB CUDA build on machines without torch.
    install_requires=["torch>=2.4,<=2.13.0", "ninja", "numpy", "psutil", "py-cpuinfo", "pydantic>=2", "tqdm"],
    extras_require={"dev": ["pytest"]},
    entry_points={"console_scripts": ["zerolib=zerolib.cli:main"]},
)
