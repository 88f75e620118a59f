"""op_builder: SIMD detection and forcing, cache naming, the build lock, build failures and fallback."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import warnings

import pytest

from op_builder import (
    CPUAdamBuilder,
    CUDAQuantizerBuilder,
    OpBuilder,
    OpBuildError,
    QuantizerBuilder,
    cache_root,
    prebuild_all,
    runnable_simd_levels,
    selected_simd_level,
    simd_compiler_flags,
)
from op_builder.builder import CSRC_DIR
from zerolib.ops.loader import NativeOpFallbackWarning, load_op

AVX2_ONLY = frozenset({"sse2", "avx", "avx2", "fma", "f16c"})
AVX512 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl"}


def test_levels_follow_the_cpu_flags():
    assert runnable_simd_levels(AVX512) == ("avx512", "avx2", "scalar")
    assert runnable_simd_levels(AVX2_ONLY) == ("avx2", "scalar")
    assert runnable_simd_levels(frozenset({"sse2"})) == ("scalar",)


def test_env_var_forces_a_lower_level_and_rejects_bad_ones(monkeypatch):
    monkeypatch.delenv("ZEROLIB_SIMD", raising=False)
    assert selected_simd_level(AVX512) == "avx512"
    monkeypatch.setenv("ZEROLIB_SIMD", "avx2")
    assert selected_simd_level(AVX512) == "avx2"
    monkeypatch.setenv("ZEROLIB_SIMD", "avx512")
    with pytest.raises(ValueError, match="ZEROLIB_SIMD=avx512 but this CPU lacks avx512f"):
        selected_simd_level(AVX2_ONLY)
    monkeypatch.setenv("ZEROLIB_SIMD", "neon")
    with pytest.raises(ValueError, match="unknown SIMD level 'neon'"):
        selected_simd_level(AVX512)


def test_each_level_has_its_own_flags_and_cache_name(monkeypatch, tmp_path):
    monkeypatch.setenv("ZEROLIB_OPS_CACHE", str(tmp_path))
    assert "-mavx512f" in simd_compiler_flags("avx512")
    assert "-mavx2" in simd_compiler_flags("avx2") and not any("512" in f for f in simd_compiler_flags("avx2"))
    assert simd_compiler_flags("scalar") == []
    names = {CPUAdamBuilder(level).kernel_name for level in ("avx512", "avx2", "scalar")}
    assert len(names) == 3
    assert CPUAdamBuilder("avx2").library_paths()[1].parent == cache_root() / "zerolib_cpu_adam_kernels_avx2"
    assert str(cache_root()).startswith(str(tmp_path))


def test_cuda_op_explains_why_it_cannot_build_here():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible; nothing to explain")
    assert CUDAQuantizerBuilder().incompatibility()


LOCK_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from op_builder.builder import exclusive_lock
    lock, log, name, held = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    with exclusive_lock(lock):
        with open(log, "a") as f: f.write(name + " in\\n")
        held.touch()
        if name == "first": time.sleep(0.5)  # the second process must wait out this sleep
        with open(log, "a") as f: f.write(name + " out\\n")
""")


def test_build_lock_serialises_processes(tmp_path):
    lock, log, held = tmp_path / "x.lock", tmp_path / "log", tmp_path / "held"
    command = [sys.executable, "-c", LOCK_HOLDER, str(lock), str(log)]
    first = subprocess.Popen([*command, "first", str(held)])
    while not held.exists() and first.poll() is None:
        pass
    second = subprocess.Popen([*command, "second", str(tmp_path / "held2")])
    assert first.wait(30) == 0 and second.wait(30) == 0
    assert log.read_text().split("\n")[:4] == ["first in", "first out", "second in", "second out"]


class BrokenBuilder(OpBuilder):
    """A kernel library whose source does not compile."""

    op_name = "broken_for_test"
    kernel_sources = ()


def make_broken_builder(tmp_path):
    source = tmp_path / "broken.cpp"
    source.write_text("int broken( { return 0; }\n")
    BrokenBuilder.kernel_sources = (str(source),)  # absolute: CSRC_DIR / source is the source itself
    assert CSRC_DIR / str(source) == source
    return BrokenBuilder


def test_build_failure_shows_op_flags_and_compiler_output_then_falls_back_once(monkeypatch, tmp_path):
    monkeypatch.setenv("ZEROLIB_OPS_CACHE", str(tmp_path / "cache"))
    builder_class = make_broken_builder(tmp_path)
    with pytest.raises(OpBuildError) as raised:
        builder_class().load()
    message = str(raised.value)
    assert "broken_for_test" in message and "flags:" in message and "-O3" in message
    assert "error" in message and "broken.cpp" in message  # the compiler's own diagnostic
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_op(builder_class) is None
        assert load_op(builder_class) is None
    fallbacks = [w for w in caught if issubclass(w.category, NativeOpFallbackWarning)]
    assert len(fallbacks) == 1 and "broken_for_test" in str(fallbacks[0].message)
    with pytest.raises(OpBuildError, match="compiler output"):
        load_op(builder_class, require_native=True)


def test_prebuild_all_builds_the_cpu_ops(native_ops_built):
    results = prebuild_all()
    level = selected_simd_level()
    assert results[CPUAdamBuilder(level).extension_name] == "built"
    assert results[QuantizerBuilder(level).extension_name] == "built"
    assert CUDAQuantizerBuilder().extension_name in results


def test_only_the_avx512_library_uses_avx512_registers(native_ops_built):
    """The avx2 and scalar builds must run on CPUs without AVX-512, even when built on one."""
    objdump = shutil.which("objdump")
    if objdump is None:
        print("skipping the instruction check: objdump not found")
        pytest.skip("objdump not found")
    for level in runnable_simd_levels():
        library = CPUAdamBuilder(level).library_paths()[-1]
        disassembly = subprocess.run([objdump, "-d", str(library)], capture_output=True, text=True).stdout
        assert ("zmm" in disassembly) == (level == "avx512"), f"{library.name}: zmm use does not match {level}"
        if level == "scalar":
            assert "ymm" not in disassembly, f"{library.name} uses AVX registers"
