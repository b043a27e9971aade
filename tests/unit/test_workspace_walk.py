"""The workspace walk's bounds, on a tree made here (no sandbox needed)."""

from __future__ import annotations

import os
from pathlib import Path

from crucible.engine.workspace import copy_files, list_files


def test_the_walk_stops_at_its_entry_cap_and_says_so(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"f{i:02}").write_text("x")
    listing = list_files(tmp_path, exclude=set(), max_files=1000, max_entries=10)
    assert len(listing.files) == 10 and listing.omitted == {"entries": 1}


def test_the_walk_stops_at_its_time_budget(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    listing = list_files(tmp_path, exclude=set(), max_files=10, budget_s=-1)
    assert listing.files == [] and listing.omitted == {"time": 1}


def test_depth_links_and_fifos_are_left_out_and_counted(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["d"] * 5)
    deep.mkdir(parents=True)
    (deep / "leaf").write_text("x")
    os.symlink("/etc/passwd", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "top").write_text("t")
    listing = list_files(tmp_path, exclude=set(), max_files=10, max_depth=3)
    assert [f.path for f in listing.files] == ["top"]
    assert listing.omitted == {"deep": 1, "special": 2}


def test_copies_never_follow_a_swapped_directory(tmp_path: Path) -> None:
    root, dest = tmp_path / "ws", tmp_path / "out"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f").write_text("mine")
    listing = list_files(root, exclude=set(), max_files=10)
    # The directory is swapped for a link to somewhere else after the listing.
    (root / "sub" / "f").unlink()
    (root / "sub").rmdir()
    elsewhere = tmp_path / "secret"
    elsewhere.mkdir()
    (elsewhere / "f").write_text("secret")
    os.symlink(elsewhere, root / "sub")
    copy_files(listing, root, dest, max_bytes=100)
    assert not (dest / "sub" / "f").exists()
