#!/usr/bin/env python3
"""ONNX Runtime's own timing of a model, the baseline of the agent's `ort`
runtime in tests/bench/bench_agent.rs: the same settings the agent uses
(CPU execution provider, intra-op threads, one inter-op thread, all graph
optimisations), inputs made once, warm-up runs, then timed runs until both
--min-runs and --min-duration-ms are met; the clock is read around the run
call alone. Runs go through an I/O binding: inputs bound once as ORT values,
outputs allocated by ORT on every run, as in the agent. (Plain session.run
also converts the feeds and outputs between numpy and ORT on every call,
about 2 µs here: a tenth of a small network's time.) Prints JSON: p50_ms
(nearest rank, as the agent), n, version.

Usage: bench_ort.py MODEL.onnx [--threads 1] [--warmup 10] [--min-runs 50]
                   [--min-duration-ms 1000] [--max-duration-ms 30000]
"""
import argparse
import json
import math
import time

import numpy as np
import onnxruntime as ort

DTYPES = {
    "tensor(float)": np.float32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--min-runs", type=int, default=50)
    parser.add_argument("--min-duration-ms", type=float, default=1000)
    parser.add_argument("--max-duration-ms", type=float, default=30000)
    args = parser.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in session.get_inputs():
        dtype = DTYPES[i.type]
        # Like the agent's inputs: floats in [-1, 1), integers in [0, 16).
        if dtype == np.float32:
            feeds[i.name] = rng.uniform(-1, 1, i.shape).astype(dtype)
        else:
            feeds[i.name] = rng.integers(0, 16, i.shape).astype(dtype)

    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value))
    for output in session.get_outputs():
        binding.bind_output(output.name, "cpu")

    session.run_with_iobinding(binding)  # the agent's untimed first run
    for _ in range(args.warmup):
        session.run_with_iobinding(binding)
    samples = []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        session.run_with_iobinding(binding)
        samples.append((time.perf_counter() - t) * 1e3)
        total_ms = (time.perf_counter() - start) * 1e3
        if (len(samples) >= args.min_runs and total_ms >= args.min_duration_ms) or total_ms >= args.max_duration_ms:
            break
    samples.sort()
    p50 = samples[max(1, math.ceil(0.5 * len(samples))) - 1]
    print(json.dumps({"p50_ms": p50, "n": len(samples), "version": ort.__version__}))


if __name__ == "__main__":
    main()
