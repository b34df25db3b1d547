"""The file layer (open_clip_thermal/files.py): a failed write leaves the old content and no debris; saved
folders read back with one clear AdapterError per way a file can be missing or broken; no torch at import."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from open_clip_thermal import files
from open_clip_thermal.files import (CONFIG_NAME, AdapterError, atomic_replace_dir, atomic_write, atomic_write_json, atomic_write_text,
                                    check_finite, read_config_file, read_weights_file)


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


def test_atomic_results_get_the_permissions_a_plain_write_would(tmp_path):
    """Not mkstemp's private 0o600 / mkdtemp's 0o700: a shared project group must be able to read results."""
    previous = os.umask(0o027)
    try:
        open(tmp_path / "plain", "w").close()
        os.mkdir(tmp_path / "plain_dir")
        new = atomic_write_text(tmp_path / "new.json", "{}")
        folder = atomic_replace_dir(tmp_path / "adapters", lambda tmp: (tmp / "a.txt").write_text("1"))
    finally:
        os.umask(previous)
    assert os.stat(new).st_mode & 0o777 == os.stat(tmp_path / "plain").st_mode & 0o777 == 0o640
    assert os.stat(folder).st_mode & 0o777 == os.stat(tmp_path / "plain_dir").st_mode & 0o777 == 0o750
    os.chmod(new, 0o604)  # an existing file keeps its own permissions, as when written in place
    assert os.stat(atomic_write_text(new, "[]")).st_mode & 0o777 == 0o604


def test_file_layer_imports_no_torch():
    script = ("import sys; import open_clip_thermal.files as f; "
              "print('torch' in sys.modules, 'safetensors' in sys.modules, f.CONFIG_NAME)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", CONFIG_NAME]


def test_adapters_reexports_the_file_layer():
    from open_clip_thermal import adapters
    for name in ("AdapterError", "CONFIG_NAME", "WEIGHTS_NAME", "read_config_file", "read_weights_file",
                 "check_finite"):
        assert getattr(adapters, name) is getattr(files, name), name


def test_read_config_file_names_each_problem(tmp_path):
    with pytest.raises(AdapterError, match=f"no {CONFIG_NAME} in kind folder"):
        read_config_file(tmp_path, "fmt", (), "kind")
    path = tmp_path / CONFIG_NAME
    for text, message in (("{", "is not valid JSON"), ('{"format": "other"}', "format='other'"),
                          ('{"format": "fmt"}', "lacks 'rank'")):
        path.write_text(text)
        with pytest.raises(AdapterError, match=message) as caught:
            read_config_file(tmp_path, "fmt", ("rank",), "kind")
        assert str(path) in str(caught.value)
    path.write_text(json.dumps({"format": "fmt", "rank": 8}))
    assert read_config_file(tmp_path, "fmt", ("rank",), "kind") == {"format": "fmt", "rank": 8}


def test_read_weights_file_and_check_finite(tmp_path):
    import torch
    from safetensors.torch import save_file
    good = {"a": torch.arange(4, dtype=torch.float32), "steps": torch.tensor([3])}
    save_file(good, str(tmp_path / "w.safetensors"))
    loaded = read_weights_file(tmp_path / "w.safetensors", "test")
    assert set(loaded) == {"a", "steps"} and torch.equal(loaded["a"], good["a"])
    with pytest.raises(AdapterError, match="test weights .*missing.safetensors missing"):
        read_weights_file(tmp_path / "missing.safetensors", "test")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00not safetensors")
    with pytest.raises(AdapterError, match="bad.safetensors cannot be read"):
        read_weights_file(tmp_path / "bad.safetensors", "test")
    check_finite(good, "the weights")  # integer tensors are not checked, finite floats pass
    with pytest.raises(AdapterError, match=r"refusing to write the weights: b holds non-finite values"):
        check_finite({**good, "b": torch.tensor([1.0, float("nan")])}, "the weights")


def test_one_non_finite_rule_for_adapters_and_checkpoints():
    import torch
    from open_clip_thermal.training import checkpoints
    assert checkpoints.first_non_finite is files.first_non_finite  # the trainer's guard is the same rule
    pairs = [("steps", torch.tensor([2**62])), ("step", 3.0), ("lr", float("nan")),  # not float tensors: skipped
             ("ok", torch.zeros(2)), ("bad", torch.tensor([float("inf")])), ("worse", torch.tensor([float("nan")]))]
    assert files.first_non_finite(pairs) == "bad"
    assert files.first_non_finite(pairs[:4]) is None
    assert files.first_non_finite(iter([("half", torch.tensor([float("nan")], dtype=torch.float16))])) == "half"
    with pytest.raises(AdapterError, match=r"refusing to write the export: bad holds non-finite values \(NaN/inf\)"):
        check_finite(dict(pairs[3:]), "the export")


def test_write_all_keeps_every_old_file_when_one_write_fails(tmp_path):
    first = files.atomic_write_all([(tmp_path / "a.md", lambda t: open(t, "w").write("old a")),
                                    (tmp_path / "b.json", lambda t: open(t, "w").write("old b"))])
    assert first == [tmp_path / "a.md", tmp_path / "b.json"]

    def fail_half_way(tmp):
        open(tmp, "w").write("new b, cut")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.atomic_write_all([(tmp_path / "a.md", lambda t: open(t, "w").write("new a")),
                                (tmp_path / "b.json", fail_half_way)])
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a.md": "old a", "b.json": "old b"}
