"""featx.files: atomic writes give results the permissions the umask allows (a shared server's group can read them)."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from featx.extract import store
from featx.files import atomic_write, atomic_write_bytes


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_get_the_mode_the_umask_allows(tmp_path, umask):
    expected = 0o666 & ~umask  # 0644 or 0640, what open() or a shell redirect gives a new file
    atomic_write_bytes(tmp_path / "report.html", b"<html></html>")
    atomic_write(tmp_path / "models" / "run.joblib", lambda f: f.write(b"bundle"))
    assert store.write_errors_csv(tmp_path / "features" / "resnet50.h5", [("a.png", "file not found")])
    for path in (
        tmp_path / "report.html",
        tmp_path / "models" / "run.joblib",
        tmp_path / "features" / "resnet50.errors.csv",
    ):
        assert _mode(path) == expected, f"{path.name}: {oct(_mode(path))} under umask {oct(umask)}"
    # overwriting keeps the same rule (the old file's mode is not inherited from a 0600 temp file)
    atomic_write_bytes(tmp_path / "report.html", b"<html>2</html>")
    assert _mode(tmp_path / "report.html") == expected
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left behind


def test_atomic_write_leaves_no_temp_file_when_the_writer_fails(tmp_path):
    def boom(handle):
        handle.write(b"half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out.json", boom)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_atomic_writes_to_one_folder_never_collide(tmp_path):
    def write(i):
        for j in range(20):
            atomic_write_bytes(tmp_path / f"f{i}_{j}.txt", str(j).encode())

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(list(tmp_path.iterdir())) == 80
