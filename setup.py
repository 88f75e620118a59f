"""Install zerolib. Set ZEROLIB_BUILD_OPS=1 to compile the native ops at install time."""
import os

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent


class BuildWithSources(build_py):
    """Ships csrc/ inside op_builder/ so a non-editable install can still JIT-compile the ops."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "op_builder" / "csrc"
        if (HERE / "csrc").is_dir() and not target.exists():
            shutil.copytree(HERE / "csrc", target)

if os.environ.get("ZEROLIB_BUILD_OPS") == "1":
    # Prebuild into the JIT cache so that the first training step does not pay for compilation.
    from op_builder import prebuild_all

    prebuild_all()

setup(
    name="zerolib",
    version="0.1.0",
    description="ZeRO memory optimizations (stages 1-3, offload, ZeRO++) for PyTorch",
    packages=find_packages(include=["zerolib", "zerolib.*", "op_builder", "op_builder.*"]),
    cmdclass={"build_py": BuildWithSources},
    python_requires=">=3.10",
    # torch is pinned at most to the CPU wheel this project tests with: a range admitting newer
    # releases makes pip fetch a multi-GB CUDA build on machines without torch.
    # tqdm: the examples' progress bar (the field's standard one).
    install_requires=["torch>=2.4,<=2.13.0", "ninja", "numpy", "psutil", "py-cpuinfo", "pydantic>=2", "tqdm"],
    # transformers: the tests train real Hugging Face model classes built from small configs.
    # plot: `zerolib plot`; monitor: the tensorboard monitor (torch's writer needs the package).
    # safetensors: the field's standard weights format; `initialize(..., pretrained=DIR)` reads a
    # Hugging Face checkpoint's slices with it and `zerolib export --safetensors` writes it, and
    # the tests compare loaded weights with the files (transformers pulls it in, but zerolib
    # imports it directly, so it is named).
    # serve: `zerolib serve-prefill`, on the serving stack vLLM uses (FastAPI app, uvicorn server).
    # dev takes them all, plus httpx (FastAPI's own test client library) for the real-HTTP server
    # tests, so that no test skips in CI.
    extras_require={"dev": ["pytest", "transformers", "safetensors", "matplotlib", "tensorboard", "fastapi",
                            "uvicorn", "httpx"],
                    "plot": ["matplotlib"], "monitor": ["tensorboard"], "safetensors": ["safetensors"],
                    "serve": ["fastapi", "uvicorn"]},
    entry_points={"console_scripts": ["zerolib=zerolib.cli:main"]},
)
