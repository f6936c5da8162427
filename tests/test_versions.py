"""The checkout's state as results record it (bench history, benchmark provenance)."""

from __future__ import annotations

import subprocess

from edgeprune.versions import git_state


def test_git_state_names_the_commit_and_the_changed_files_of_a_checkout(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    assert git_state(tmp_path) == {"commit": None, "uncommitted_files": []}     # no checkout: an installed wheel
    (tmp_path / "edgeprune").mkdir()
    (tmp_path / "edgeprune" / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("n\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_state(tmp_path) == {"commit": head, "uncommitted_files": []}
    (tmp_path / "edgeprune" / "a.py").write_text("x = 2\n")
    (tmp_path / "notes.txt").write_text("changed, but outside the paths asked about\n")
    # git's own porcelain line, its leading status column kept
    assert git_state(tmp_path) == {"commit": head, "uncommitted_files": [" M edgeprune/a.py"]}
