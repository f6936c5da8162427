"""TensorRT version tables: API generations and the highest opset each release's ONNX parser reads.

Owned by the tensorrt backend; `edgeprune.targets` asks them when it checks a target file.
"""

from __future__ import annotations

from edgeprune.errors import InputError
from edgeprune.versions import version_tuple

# TensorRT API generations (DEPLOY.md §1.1, §1.7): 8.2-8.4 bind by index (`execute_async_v2`,
# `max_workspace_size` on 8.2); 8.5 brought name-based I/O, which 10.0 made the only API; 11.0
# removed weak typing (FP16/INT8 builder flags, calibrators). Code that branches on the API asks
# `trt_generation`, never compares versions itself.
TRT_GENERATIONS = ("8.2", "8.5-10", "11")
# Highest ONNX opset each TensorRT release's ONNX parser reads (onnx-tensorrt docs/operators.md of
# that release: 8.2/8.4 -> 13, 8.5/8.6 -> 17, 9.2 -> 19, 10.0 -> 20, 10.15 -> 24; 11.x -> 25 per
# DEPLOY.md §1.1). A target's stack.max_opset may be lower, never higher.
_TRT_PARSER_MAX_OPSET = ((8, 2), 13), ((8, 5), 17), ((9, 2), 19), ((10, 0), 20), ((10, 15), 24), ((11, 0), 25)


def trt_generation(version: str | tuple[int, ...]) -> str:
    """`"8.2"` for TensorRT 8.2-8.4, `"8.5-10"` for 8.5-10.x, `"11"` for 11.x and later.

    Raises InputError for anything older than 8.2, which edgeprune does not support.
    """
    v = version_tuple(version)
    if not v:
        raise InputError(f"'{_vtext(version)}' is not a TensorRT version (e.g. 10.3.0)")
    if v < (8, 2):
        raise InputError(f"TensorRT {_vtext(version)} is older than 8.2, the oldest version edgeprune supports")
    if v < (8, 5):
        return "8.2"
    if v < (11,):
        return "8.5-10"
    return "11"


def trt_parser_max_opset(version: str | tuple[int, ...]) -> int:
    """The highest opset the ONNX parser of TensorRT `version` reads (>= 8.2)."""
    v = version_tuple(version)
    trt_generation(v)  # rejects versions before 8.2
    return max(opset for since, opset in _TRT_PARSER_MAX_OPSET if v >= since)


def _vtext(version: str | tuple[int, ...]) -> str:
    return version if isinstance(version, str) else ".".join(map(str, version))


