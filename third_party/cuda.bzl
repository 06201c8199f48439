"""cuda_library: .cu sources compiled by nvcc into a static library.

Only with `bazel build --config=cuda` (--define=cuda=1); otherwise the
targets are incompatible and `bazel build //...` skips them. nvcc is
/usr/local/cuda/bin/nvcc (CUDA 13, host compiler g++); code for sm_90
(H100/H200, plus PTX for later GPUs) and sm_80 (A100).
"""

NVCC = "/usr/local/cuda/bin/nvcc"

NVCC_FLAGS = " ".join([
    "-std=c++17",
    "-O2",
    "-Xcompiler -fPIC",
    "'-gencode=arch=compute_90,code=[sm_90,compute_90]'",
    "'-gencode=arch=compute_80,code=sm_80'",
    "-I.",
])

# target_compatible_with for CUDA-only targets.
CUDA_ONLY = select({
    "//third_party:cuda_enabled": [],
    "//conditions:default": ["//third_party:cuda_build_disabled"],
})

def cuda_library(name, srcs, hdrs = [], cu_hdrs = [], deps = [], defines = [], **kwargs):
    """A cc_library of .cu files.

    Args:
      name: the cc_library's name.
      srcs: .cu files, each compiled by nvcc.
      hdrs: public headers of the library (plain C++, no CUDA types).
      cu_hdrs: other repo headers the .cu files include (nvcc reads them).
      deps: cc deps (their headers are not seen by nvcc: list them in cu_hdrs;
        system headers under /usr/include are).
      defines: as cc_library's (propagate to dependents).
      **kwargs: testonly, visibility, ...
    """
    lib = "lib%s_nvcc.a" % name
    native.genrule(
        name = name + "_nvcc",
        srcs = srcs + hdrs + cu_hdrs,
        outs = [lib],
        cmd = "%s %s -lib %s -o $@" % (
            NVCC,
            NVCC_FLAGS,
            " ".join(["$(location %s)" % s for s in srcs]),
        ),
        message = "nvcc %s" % name,
        target_compatible_with = CUDA_ONLY,
        **kwargs
    )
    native.cc_library(
        name = name,
        srcs = [":" + lib],
        hdrs = hdrs,
        deps = deps + ["//third_party:cuda"],
        defines = defines,
        target_compatible_with = CUDA_ONLY,
        **kwargs
    )
