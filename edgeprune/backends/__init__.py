"""Backends build engines from ONNX files for a target and open sessions on them."""

from edgeprune.backends.base import Backend, Engine, Session, available_backends, get_backend

__all__ = ["Backend", "Engine", "Session", "available_backends", "get_backend"]
