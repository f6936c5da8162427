"""A fake `trtexec` for the tests (no GPU here): what the generated scripts call on a Jetson.

It takes the flags edgeprune's scripts pass. A build (`--onnx --saveEngine`) writes an "engine" that
names its ONNX file and precision, the `--exportLayerInfo` JSON (`fake_tensorrt.layer_info_json`)
and a log. A benchmark (`--loadEngine --shapes --iterations`) runs the engine's ONNX model with ONNX
Runtime `--iterations` times at the batch of `--shapes`, and writes `--exportTimes` rows whose
`computeMs` are those real run times, plus a log with the lines trtexec prints (version, context
memory). So the times a test collects are the models' own cost, not numbers made up here.

Run as `python tests/fake_trtexec.py ARGS` (a `trtexec` shim on PATH execs it).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

VERSION = "10.3.0"
CONTEXT_MIB = {"FP32": 0.5, "FP16": 0.25, "INT8": 0.125}


def _flags(argv: list[str]) -> dict[str, str]:
    out = {}
    for a in argv:
        key, _, value = a.lstrip("-").partition("=")
        out[key] = value
    return out


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.fake_tensorrt import layer_info_json

    f = _flags(argv)
    print(f"[I] TensorRT version: {VERSION}")
    if "saveEngine" in f:
        precision = "INT8" if "int8" in f else "FP16" if "fp16" in f else "FP32"
        onnx_path = str(Path(f["onnx"]).resolve())
        Path(f["saveEngine"]).write_text(f"fake-trtexec-engine {precision}\n{onnx_path}\n")
        if "exportLayerInfo" in f:
            Path(f["exportLayerInfo"]).write_text(layer_info_json(onnx_path, precision, int(VERSION.split(".")[0])))
        print("[I] Engine built.")
        return 0
    import numpy as np
    import onnxruntime as ort

    precision, onnx_path = Path(f["loadEngine"]).read_text().splitlines()[:2]
    precision = precision.split()[1]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    dims = [int(d) for d in f["shapes"].rpartition(":")[2].split("x")]
    x = np.random.default_rng(0).random(dims, dtype=np.float32)
    print(f"[I] Created execution context with device memory size: {CONTEXT_MIB[precision]} MiB")
    rows, clock = [], 0.0
    for _ in range(int(f.get("iterations", "10"))):
        t0 = time.perf_counter_ns()
        sess.run(None, {name: x})
        ms = (time.perf_counter_ns() - t0) / 1e6
        rows.append({"startEnqMs": clock, "endEnqMs": clock + 0.01, "startH2dMs": clock, "endH2dMs": clock + 0.01,
                     "startComputeMs": clock + 0.01, "endComputeMs": clock + 0.01 + ms, "startD2hMs": clock + 0.01 + ms,
                     "endD2hMs": clock + 0.02 + ms, "h2dMs": 0.01, "computeMs": ms, "d2hMs": 0.01, "latencyMs": ms + 0.02})
        clock += ms + 0.05
    Path(f["exportTimes"]).write_text(json.dumps(rows))
    Path(f["exportProfile"]).write_text(json.dumps([{"count": len(rows)}, {"name": "fake layer", "timeMs": clock,
                                                                            "averageMs": clock / len(rows),
                                                                            "percentage": 100.0}]))
    print("=== Performance summary ===")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
