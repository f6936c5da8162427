"""Analyses of trained models: the pruning-limit estimate (limit.py) and the low-rank view (lowrank.py)."""
