"""Builds relpos._C: the CPU op always; the CUDA op when a CUDA toolchain and a CUDA build of torch exist.

RELPOS_USE_CUDA=1 forces the CUDA part (and fails loudly if it cannot be built), RELPOS_USE_CUDA=0 skips it.
Build with `pip install --no-build-isolation -e .` so the installed torch is used.
"""

import glob
import os
import sys

from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
import torch


def cuda_headers_found() -> bool:
    """torch takes CUDA_HOME from the nvcc on PATH when the variable is unset; a wrapper script (/usr/local/bin/nvcc)
    then gives a folder without the toolkit's headers, and the build would fail halfway."""
    return CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "include", "cuda_runtime.h"))


def want_cuda() -> bool:
    flag = os.environ.get("RELPOS_USE_CUDA", "auto").lower()
    available = CUDA_HOME is not None and torch.version.cuda is not None
    if flag in ("1", "true", "yes", "on"):
        if not available or not cuda_headers_found():
            raise RuntimeError(
                "RELPOS_USE_CUDA=1 but no CUDA build of torch or no CUDA toolchain with its headers was found "
                f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME}; set CUDA_HOME to the toolkit's "
                "folder, the one holding include/cuda_runtime.h)"
            )
        return True
    if flag in ("0", "false", "no", "off"):
        return False
    if available and not cuda_headers_found():
        print(f"relpos: building the CPU op only: CUDA_HOME={CUDA_HOME} has no include/cuda_runtime.h (set CUDA_HOME "
              "to the CUDA toolkit's folder, or RELPOS_USE_CUDA=1 to require the CUDA op)", file=sys.stderr)
        return False
    return available


def openmp_flags() -> tuple[list[str], list[str]]:
    """Compile and link flags that make at::parallel_for parallel, as torch's own build does (-fopenmp with GCC;
    the libgomp torch ships is the one loaded at run time, it has the same soname). Empty where torch itself has
    no OpenMP or the compiler is not GCC-compatible on Linux (macOS clang has no -fopenmp): the op then runs on
    one thread and build_info() says so."""
    if not torch.backends.openmp.is_available() or not sys.platform.startswith("linux"):
        return [], []
    return ["-fopenmp"], ["-fopenmp"]


def cuda_archs() -> str:
    """The architectures the CUDA part is compiled for, recorded in the extension for build_info()."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    return ",".join(archs.replace(";", " ").split()) if archs else "8.0,9.0,9.0+PTX"


def extension():
    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    omp_compile, omp_link = openmp_flags()
    cxx = ["-O3"] + omp_compile  # the C++ standard is the one torch asks for
    include_dirs = [os.path.join(here, "csrc")]
    if want_cuda():
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        arch_define = f"-DRELPOS_CUDA_ARCHS={cuda_archs()}"  # no quotes or ';': the build runs it through a shell
        nvcc = ["-O3", "-lineinfo", "--fmad=false", "-DRELPOS_WITH_CUDA"]
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
        if not archs:  # sm_80 (A100) and sm_90 (H100/H200) at least, plus PTX for newer parts
            nvcc += ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
                     "-gencode=arch=compute_90,code=compute_90"]
        return CUDAExtension(
            "relpos._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx + ["-DRELPOS_WITH_CUDA", arch_define], "nvcc": nvcc},
            extra_link_args=omp_link,
        )
    return CppExtension("relpos._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx},
                        extra_link_args=omp_link)


setup(ext_modules=[extension()], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
