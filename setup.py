"""Build frkd_kernels and its C++ extension ``frkd_kernels._C``.

CPU kernels (csrc/cpu/*.cpp, compiled as one translation unit: csrc/frkd_ext.cpp) are always
built. CUDA kernels (csrc/cuda/*.cu and csrc/cuda/*.cpp) are added when PyTorch is a CUDA build and nvcc is found, unless
FRKD_SKIP_CUDA_BUILD=1; FRKD_FORCE_CUDA=1 builds them without a visible GPU. TORCH_CUDA_ARCH_LIST
picks the architectures; DEBUG=1 builds with -O0 -g. ninja compiles MAX_JOBS files at once (default:
the number of CPUs). Install with a pinned torch first:
    pip install torch==2.13.0 && pip install --no-build-isolation -e .
"""
import glob
import os

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def extensions():
    debug = _flag("DEBUG")
    cpu_sources = _sources("csrc/frkd_ext.cpp")
    cuda_sources = _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
    cuda_build = torch.version.cuda is not None and CUDA_HOME is not None
    use_cuda = bool(cuda_sources) and not _flag("FRKD_SKIP_CUDA_BUILD") and (cuda_build or _flag("FRKD_FORCE_CUDA"))
    if not cuda_sources:
        why = "no CUDA sources"
    elif _flag("FRKD_SKIP_CUDA_BUILD"):
        why = "FRKD_SKIP_CUDA_BUILD=1"
    elif not cuda_build:
        why = f"torch {torch.__version__} is not a CUDA build" if torch.version.cuda is None else "nvcc not found"
    else:
        why = f"arch list {os.environ.get('TORCH_CUDA_ARCH_LIST', 'torch default')}"
    print(f"frkd setup: C++ CPU translation units: {len(cpu_sources)}; CUDA: {'on' if use_cuda else 'off'} ({why}); "
          f"debug: {debug}; torch {torch.__version__}")
    if not cpu_sources:
        return []
    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx = opt + ["-std=c++17", "-fopenmp"]
    if use_cuda:
        return [CUDAExtension(
            "frkd_kernels._C", cpu_sources + cuda_sources, include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx + ["-DFRKD_WITH_CUDA"], "nvcc": opt + ["-std=c++17", "-DFRKD_WITH_CUDA"]},
            extra_link_args=["-fopenmp"], py_limited_api=False)]
    return [CppExtension(
        "frkd_kernels._C", cpu_sources, include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])]


setup(
    name="frkd",
    version="0.1.0",
    description="Fused kernels and a trainer for feature-refine knowledge distillation in semantic segmentation",
    packages=find_packages(include=["frkd_kernels", "frkd_kernels.*", "frkd", "frkd.*", "bench", "bench.*"]),
    # the synthetic benchmark's shipped pretext backbones (frkd.pretext)
    package_data={"frkd": ["pretext_weights/MANIFEST.json"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "numpy"],
    extras_require={
        "train": ["pillow", "tqdm", "matplotlib"],
        "triton": ["triton"],
        "models": ["transformers>=4.40"],  # SegFormer/MiT and MobileViT students and teachers
        "test": ["pytest", "pillow", "tqdm", "matplotlib", "triton", "expecttest"],
    },
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
