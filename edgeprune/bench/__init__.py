"""Nightly benchmarks: the matrix of cells (`config`, `runner`), its SQLite history (`history`),
the regression verdict (`regress`) and the report page (`htmlreport`). Never imports typer: the CLI
is a thin shell over it."""
