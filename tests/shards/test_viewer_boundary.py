"""`prolongvid view --out DIR` writes into a new or empty folder or one an earlier view marked as its own, and then
replaces or removes only the files that view listed; any other folder is refused (exit 2, one line) untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shards.viewer_dir import MARKER
from tests.shards.viewer_run import make_run

ROOT = Path(__file__).resolve().parents[2]


def view(run: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "view", str(run), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder` (links not followed): file bytes, link targets, folders."""
    found: dict[str, bytes | str] = {}
    for top, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(top) / name
            rel = str(path.relative_to(folder))
            found[rel] = f"-> {os.readlink(path)}" if path.is_symlink() else "dir" if path.is_dir() else path.read_bytes()
    return found


def refused(done: subprocess.CompletedProcess, folder: Path) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(folder) in lines[0], done.stderr
    return lines[0]


def listed(site: Path) -> set[str]:
    doc = json.loads((site / MARKER).read_text())
    assert doc["format"] == 1
    return set(doc["files"])


def test_a_project_folder_holding_a_data_js_is_refused_untouched(tmp_path):
    run = make_run(tmp_path / "run")
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "app.py").write_bytes(b"print('mine')\n")
    (project / "data.js").write_bytes(b"export const data = [1, 2, 3];\n")
    before = snapshot(project)
    line = refused(view(run.root, "--out", str(project)), project)
    assert "data.js" in line and "src/" in line
    assert snapshot(project) == before


def test_an_empty_folder_gets_a_site_and_a_marker_listing_exactly_its_files(tmp_path):
    run = make_run(tmp_path / "run")
    site = tmp_path / "site"
    site.mkdir()
    done = view(run.root, "--out", str(site))
    assert done.returncode == 0, done.stderr
    on_disk = {rel for rel, v in snapshot(site).items() if v != "dir"} - {MARKER}
    assert listed(site) == on_disk and {"index.html", "data.js", "pages/vid003.html"} <= on_disk


def test_a_re_view_replaces_its_own_files_and_keeps_the_users(tmp_path):
    run = make_run(tmp_path / "run")
    site = run.root / "viewer"  # the default folder
    assert view(run.root).returncode == 0
    first = {rel for rel, v in snapshot(site).items() if v != "dir"}
    mine = {"notes.txt": b"my notes\n", "pages/my-page.html": b"<p>mine</p>", "frames/vid003/mine.jpg": b"\xff\xd8me"}
    for rel, data in mine.items():
        (site / rel).write_bytes(data)
    done = view(run.root, "--sample", "2")
    assert done.returncode == 0, done.stderr
    assert {rel: (site / rel).read_bytes() for rel in mine if (site / rel).exists()} == mine
    second = listed(site)
    assert len([f for f in second if f.startswith("pages/")]) == 2 and second < first
    files = {rel for rel, v in snapshot(site).items() if v != "dir"} - {MARKER}
    assert files == second | set(mine)  # the first site's other files are gone, the user's are all there


@pytest.mark.parametrize("plant", ["notes", "old-site-lookalike", "default-folder"])
def test_a_non_empty_unmarked_folder_is_refused_untouched(tmp_path, plant):
    run = make_run(tmp_path / "run")
    folder = run.root / "viewer" if plant == "default-folder" else tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_bytes(b"keep me\n")
    if plant == "old-site-lookalike":  # what a site looks like, plus a file no view writes
        (folder / "data.js").write_bytes(b"window.VIEW_DATA={};\n")
        (folder / "index.html").write_bytes(b"<html></html>\n")
    before = snapshot(folder)
    line = refused(view(run.root, *([] if plant == "default-folder" else ["--out", str(folder)])), folder)
    assert "notes.txt" in line
    assert snapshot(folder) == before


def test_a_symlinked_out_or_a_linked_folder_inside_a_site_leads_nowhere(tmp_path):
    run = make_run(tmp_path / "run")
    project = tmp_path / "project"
    project.mkdir()
    (project / "data.js").write_bytes(b"mine\n")
    link = tmp_path / "link"
    link.symlink_to(project)
    refused(view(run.root, "--out", str(link)), link)
    assert snapshot(project) == {"data.js": b"mine\n"}

    site = tmp_path / "site"
    assert view(run.root, "--out", str(site)).returncode == 0
    elsewhere = tmp_path / "elsewhere"
    (site / "pages").rename(elsewhere)  # the site's pages folder becomes a link to a folder outside it
    (site / "pages").symlink_to(elsewhere)
    before = snapshot(elsewhere)
    refused(view(run.root, "--out", str(site)), site)
    assert snapshot(elsewhere) == before


def test_a_marker_naming_files_outside_the_site_is_refused(tmp_path):
    run = make_run(tmp_path / "run")
    site = tmp_path / "site"
    assert view(run.root, "--out", str(site)).returncode == 0
    (tmp_path / "outside.txt").write_bytes(b"not the site's\n")
    (site / MARKER).write_text(json.dumps({"format": 1, "files": ["index.html", "../outside.txt"]}))
    before = snapshot(site)
    refused(view(run.root, "--out", str(site)), site)
    assert (tmp_path / "outside.txt").read_bytes() == b"not the site's\n" and snapshot(site) == before


def test_a_users_file_where_a_new_page_goes_is_refused_before_anything_changes(tmp_path):
    run = make_run(tmp_path / "run")
    site = tmp_path / "site"
    assert view(run.root, "--out", str(site), "--sample", "1").returncode == 0
    for name in ("vid000", "vid001", "vid002", "vid003", "vid004", "vid005"):
        if not (site / "pages" / f"{name}.html").exists():
            (site / "pages" / f"{name}.html").write_bytes(b"the user's page\n")
    before = snapshot(site)
    line = refused(view(run.root, "--out", str(site)), site)
    assert "which no earlier view wrote" in line and snapshot(site) == before


def test_a_site_from_before_the_marker_is_taken_when_every_file_is_the_viewers(tmp_path):
    run = make_run(tmp_path / "run")
    site = run.root / "viewer"
    assert view(run.root).returncode == 0
    (site / MARKER).unlink()  # the layout older versions wrote
    done = view(run.root, "--sample", "2")
    assert done.returncode == 0, done.stderr
    assert len(list((site / "pages").iterdir())) == 2 and len(listed(site)) > 2
