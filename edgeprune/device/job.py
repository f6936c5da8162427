"""A job: what the host asks a board to build and measure, as plain JSON in `JOB/job.json`.

The host writes it (`job_dict`), the board reads it back into a `Target` (`target_of`). The engine
inputs and the test data travel beside it: `dense.onnx`, `pruned.onnx`, `x.npy`, `y.npy`. The
board writes `built.json` after the builds and `result.json` after the measurement (a
`PairMeasurement`); what is there when a run is repeated is not done again.
"""

from __future__ import annotations

from typing import Any

from edgeprune.targets import Target, build_policy_from_dict, run_policy_from_dict

JOB_VERSION = 1
MODELS = {"dense": "dense.onnx", "pruned": "pruned.onnx"}
# INT8: the pruned model quantised on the host (the board has no onnx to quantise with); built as it is
INT8_MODEL = "pruned.int8.onnx"
DATA = {"x": "x.npy", "y": "y.npy"}
JOB, BUILT, RESULT = "job.json", "built.json", "result.json"


def job_dict(target: Target, int8: dict[str, str] | None = None,
             plans: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The job; ``int8``: how the host quantised `INT8_MODEL` (recorded on the board's INT8 engine);
    ``plans``: TensorRT's engine plans, made on the host (the board builds them as they are)."""
    models = {**MODELS, "pruned_int8": INT8_MODEL} if int8 is not None else dict(MODELS)
    if plans is not None:
        models = {label: p["onnx"] for label, p in plans.items()}
    job = {"version": JOB_VERSION, "models": models, "data": DATA,
           "target": {"name": target.name, "description": target.description, "backend": target.backend,
                      "stack": dict(target.stack), "hardware": dict(target.hardware),
                      "build": target.build.to_dict(), "run": target.run.to_dict()}}
    if int8 is not None:
        job["int8"] = int8
    if plans is not None:
        job["plans"] = plans
    return job


def target_of(job: dict[str, Any]) -> Target:
    t = job["target"]
    return Target(name=t["name"], description=t["description"], backend=t["backend"], stack=t["stack"],
                  hardware=t["hardware"], build=build_policy_from_dict(t["build"], "job.json [build]"),
                  run=run_policy_from_dict(t["run"], "job.json [run]"))
