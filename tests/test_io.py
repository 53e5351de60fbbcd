"""Atomic writes: the target appears whole or not at all, with the mode a plain open() would give."""
import os
import stat

import pytest

from sde_diffusion._io import atomic_path, write_text


def test_write_text_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.md", "hello\n")
    finally:
        os.umask(old)
    assert (tmp_path / "a.md").read_text() == "hello\n"
    assert stat.S_IMODE((tmp_path / "a.md").stat().st_mode) == 0o644


def test_failed_write_leaves_old_file_and_no_temporaries(tmp_path):
    target = tmp_path / "table.md"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.md"]
