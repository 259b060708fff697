"""The code revision a sweep records: a git checkout's HEAD, else the revision `make cluster-up`
wrote into the copy it synced (which has no .git), else the package version."""
from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

from orchestrator.experiments import REVISION_FILE, code_rev

REPO = Path(__file__).parents[3]


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def _cluster_up(root: Path) -> str:
    """`make cluster-up` with `ray up` replaced by `true`; returns the revision file it wrote."""
    subprocess.run(["make", "-s", "-C", str(root), "cluster-up", "RAY=true"], check=True, capture_output=True)
    return (root / REVISION_FILE).read_text().strip()


def test_checkout_head_then_recorded_revision_then_package_version(tmp_path):
    root = tmp_path / "code"
    root.mkdir()
    for name in ("Makefile", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "c")
    head = _git(root, "rev-parse", "HEAD")
    assert _cluster_up(root) == code_rev(root) == head and len(head) == 40
    assert not _git(root, "status", "--porcelain")  # the revision file is git-ignored

    with (root / "Makefile").open("a") as f:
        f.write("# an edit not committed\n")
    assert _cluster_up(root) == code_rev(root) == f"{head}-dirty"

    shutil.rmtree(root / ".git")  # what the cluster's rsync copies
    assert code_rev(root) == f"{head}-dirty"
    (root / REVISION_FILE).unlink()
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert code_rev(root) == f"impsweep-{version}"
