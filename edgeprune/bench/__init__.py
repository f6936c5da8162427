"""Nightly benchmarks: the matrix runner, the SQLite history, the regression verdict, the report."""
