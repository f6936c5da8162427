"""edgeprune: prune a trained PyTorch model, export it, build an engine for an edge target, and
measure it side by side with the dense model."""

__version__ = "0.1.0"
