"""Measuring on a device: power and energy (the timing loop and verdict move here next)."""
