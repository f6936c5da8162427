"""Measuring on a device, for every backend: the interleaved timing loop (timing), accuracy and
agreement (accuracy), the noise-band verdict (verdict), power and energy (power). numpy only."""
