"""psd_fuzzer: one libFuzzer harness and its corpus replay test."""

def psd_fuzzer(name, deps, size = "small"):
    """Declares the harness `name` (source `name`.cc, corpus corpus/`name`/).

    Targets:
      `name`_lib: the harness (LLVMFuzzerTestOneInput).
      `name`: under --config=fuzz, the libFuzzer binary (clang,
          -fsanitize=fuzzer); otherwise the same harness with replay_main,
          run over the files given on its command line.
      `name`_corpus_test: replays every file of corpus/`name`/ (the seeds
          and the crashes once found) in the normal `bazel test //...`.
    """
    native.cc_library(
        name = name + "_lib",
        testonly = True,
        srcs = [name + ".cc"],
        deps = deps + [":fuzz_util"],
        alwayslink = True,
    )
    native.cc_binary(
        name = name,
        testonly = True,
        deps = [":" + name + "_lib"] + select({
            ":fuzz": [],
            "//conditions:default": [":replay_main"],
        }),
        linkopts = select({
            ":fuzz": ["-fsanitize=fuzzer"],
            "//conditions:default": [],
        }),
    )
    native.cc_test(
        name = name + "_corpus_test",
        size = size,
        args = ["tests/fuzz/corpus/" + name],
        data = native.glob(["corpus/" + name + "/**"]),
        deps = [
            ":" + name + "_lib",
            ":replay_main",
        ],
    )
