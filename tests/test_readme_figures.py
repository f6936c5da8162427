"""README's benchmark tables against the results files they are rendered from (benchmarks/render_readme.py)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import render_readme  # noqa: E402

README = (REPO / "README.md").read_text()
MAIN_TABLES = {"e2e", "e2e-seeds", "methods", "int8", "activation", "spectral", "limit", "ddp"}


def test_readme_tables_are_what_the_results_files_say():
    assert render_readme.render(README) == README, "README.md is out of date with benchmarks/results: run `make readme`"


def test_the_main_benchmark_tables_are_rendered_blocks():
    names = {m["name"] for m in render_readme.BLOCK.finditer(README)}
    assert MAIN_TABLES <= names


def test_a_changed_result_makes_the_readme_disagree(tmp_path):
    """The comparison must see a figure move: a faster pruned resnet8 in e2e.json changes the README."""
    results = tmp_path / "results"
    shutil.copytree(REPO / "benchmarks" / "results", results)
    rec = json.loads((results / "e2e.json").read_text())
    row = next(r for r in rec["table"]["rows"] if r[1] == "edgeprune channel, scope global")
    row[rec["table"]["columns"].index("b64 ratio")] = "0.400"
    (results / "e2e.json").write_text(json.dumps(rec))
    rendered = render_readme.render(README, results)
    assert rendered != README and "| 0.400 |" in rendered


def test_every_rendered_table_names_its_source_and_commit():
    for m in render_readme.BLOCK.finditer(README):
        assert "Source: `benchmarks/results/" in m["body"], m["name"]
        assert "commit " in m["body"], m["name"]


def test_results_files_record_provenance():
    for path in sorted((REPO / "benchmarks" / "results").glob("*.json")):
        p = json.loads(path.read_text()).get("provenance")
        assert p and p["schema"] == "edgeprune.provenance/1", path.name
        assert "commit" in p["git"] and isinstance(p["versions"], dict) and isinstance(p["machine"], dict), path.name


def test_the_provenance_of_this_checkout_names_commit_versions_and_machine():
    import provenance

    p = provenance.provenance()
    assert len(p["git"]["commit"] or "") == 40
    assert p["versions"]["torch"] and p["versions"]["onnxruntime"]
    assert p["machine"]["cpu"] and p["machine"]["cpu_count"] >= 1


def test_an_unknown_block_is_an_error():
    with pytest.raises(KeyError, match="nope"):
        render_readme.render("<!-- table:nope -->\n<!-- /table -->\n")


@pytest.mark.parametrize("diffs, verdict", [
    ([0.44 + d for d in (-0.9, 0.0, 0.9)], "level within noise"),   # spectral at 90 %: +0.44 ± 0.90
    ([1.10, 1.14, 1.18], "ahead"),
    ([-0.30, -0.31, -0.29], "behind"),
    ([0.5], "one seed: no verdict"),
])
def test_the_noise_rule(diffs, verdict):
    assert render_readme.paired_verdict(diffs) == verdict


def test_latency_within_the_aa_band_is_level():
    assert render_readme.latency_verdict(1.015, 1.01) == "level within noise"
    assert render_readme.latency_verdict(0.5, 1.01) == "2.00x faster"
