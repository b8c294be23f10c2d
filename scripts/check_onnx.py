#!/usr/bin/env python3
"""Independent check of exported models: for every NAME.onnx in DIR, run
onnx.checker.check_model(full_check=True), run the model in ONNX Runtime on
NAME.input.bin (raw little-endian f32) and compare with NAME.expected.bin
(the output another runtime produced). Exits 1 if any check fails.

Usage: check_onnx.py DIR [--tolerance 1e-4]
"""
import argparse
import json
import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort


def dims(value_info):
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=pathlib.Path)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    failures, report = 0, []
    models = sorted(args.dir.glob("*.onnx"))
    if not models:
        print(f"no .onnx files in {args.dir}", file=sys.stderr)
        return 1
    for path in models:
        name = path.stem
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        x = np.fromfile(args.dir / f"{name}.input.bin", dtype="<f4").reshape(dims(model.graph.input[0]))
        expected = np.fromfile(args.dir / f"{name}.expected.bin", dtype="<f4")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {model.graph.input[0].name: x})
        diff = float(np.max(np.abs(got.reshape(-1) - expected))) if got.size == expected.size else float("inf")
        ok = diff <= args.tolerance
        failures += not ok
        report.append({"model": name, "max_abs_diff": diff, "max_abs_output": float(np.max(np.abs(expected))), "ok": ok})
    print(json.dumps({"tolerance": args.tolerance, "models": report}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
