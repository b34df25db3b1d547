"""The atomic-write rule (open_clip_thermal/files.py): a failed write leaves the old content and no debris."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from open_clip_thermal.files import atomic_replace_dir, atomic_write, atomic_write_json


def test_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = atomic_write_json(tmp_path / "a.json", {"v": 1})

    def broken(tmp):
        with open(tmp, "w") as handle:
            handle.write('{"v": 2')  # half written ...
        raise RuntimeError("disk full")  # ... then the writer fails

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_killed_writer_never_exposes_a_partial_file(tmp_path):
    """SIGKILL in the middle of a write: the destination keeps its previous content."""
    target = tmp_path / "big.bin"
    atomic_write(target, lambda tmp: open(tmp, "wb").write(b"old"))
    script = textwrap.dedent(f"""
        import os, signal
        from open_clip_thermal.files import atomic_write
        def write(tmp):
            with open(tmp, "wb") as handle:
                handle.write(b"x" * 1000)
                handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        atomic_write({str(target)!r}, write)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    assert target.read_bytes() == b"old"


def test_replace_dir_swaps_whole_folders(tmp_path):
    folder = tmp_path / "adapters"
    atomic_replace_dir(folder, lambda tmp: (tmp / "one.txt").write_text("1"))
    atomic_replace_dir(folder, lambda tmp: (tmp / "two.txt").write_text("2"))
    assert sorted(p.name for p in folder.iterdir()) == ["two.txt"]
    with pytest.raises(ValueError):
        atomic_replace_dir(folder, lambda tmp: (_ for _ in ()).throw(ValueError("bad")))
    assert sorted(p.name for p in folder.iterdir()) == ["two.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapters"]
    assert os.stat(atomic_write(tmp_path / "m", lambda t: open(t, "w").write("m"), mode=0o644)).st_mode & 0o777 == 0o644
