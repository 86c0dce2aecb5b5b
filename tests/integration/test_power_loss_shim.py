"""The power-loss shim keeps exactly what was made durable, and nothing else.

The cluster test (`test_power_loss.py`) is only as good as this model, so each durability
call the shim knows is checked on a real process under LD_PRELOAD, and so are its
boundaries (files it does not watch, writes that were never synced, LMDB with and without
sync). No cluster: one short Python process per case, then the restore the cluster test
uses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb
import pytest

from tests.integration.powerloss import (
    SHADOW_SUFFIX,
    build_shim,
    restore_synced_state,
    shim_environment,
)

PAGE = 4096
CHILD_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shim(tmp_path_factory.mktemp("powerloss-shim"))


def _run(shim: Path, root: Path, code: str) -> None:
    """Run `code` in a fresh Python process under the shim watching `root`."""
    env = dict(os.environ, **shim_environment(shim, root))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"child failed ({done.returncode}):\n{done.stderr}"


def test_fsync_keeps_what_was_written_before_it_and_drops_the_rest(
    shim: Path, tmp_path: Path
) -> None:
    path = tmp_path / "data.mdb"
    _run(
        shim,
        tmp_path,
        f"""
        import os
        fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)
        os.write(fd, b"A" * {PAGE})
        os.fsync(fd)
        os.pwrite(fd, b"B" * {PAGE}, 0)   # overwrites what was synced: not durable
        os.write(fd, b"C" * {PAGE})       # grows the file: not durable
        """,
    )
    assert path.read_bytes() == b"B" * PAGE + b"C" * PAGE  # the page cache had it all
    [restored] = restore_synced_state(tmp_path)
    assert path.read_bytes() == b"A" * PAGE
    assert restored.synced and restored.dropped
    assert not (tmp_path / f"data.mdb{SHADOW_SUFFIX}").exists()


def test_fdatasync_counts_like_fsync(shim: Path, tmp_path: Path) -> None:
    path = tmp_path / "data.mdb"
    _run(
        shim,
        tmp_path,
        f"""
        import os
        fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)
        os.write(fd, b"A" * 10)
        os.fdatasync(fd)
        os.write(fd, b"B" * 10)
        """,
    )
    restore_synced_state(tmp_path)
    assert path.read_bytes() == b"A" * 10


def test_a_file_never_synced_is_gone_after_the_power_loss(shim: Path, tmp_path: Path) -> None:
    path = tmp_path / "node" / "data.mdb"
    path.parent.mkdir()
    _run(shim, tmp_path, f"open({str(path)!r}, 'wb').write(b'unsynced')")
    [restored] = restore_synced_state(tmp_path)
    assert not path.exists() and not restored.synced and restored.dropped


def test_an_o_dsync_write_is_durable_by_itself_and_only_its_bytes(
    shim: Path, tmp_path: Path
) -> None:
    """LMDB writes its meta page through a second descriptor opened O_DSYNC: without
    this, every LMDB environment would lose its last commit in the model."""
    path = tmp_path / "data.mdb"
    _run(
        shim,
        tmp_path,
        f"""
        import os
        plain = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)
        os.write(plain, b"A" * {PAGE})
        os.fsync(plain)
        os.pwrite(plain, b"B" * {PAGE}, {PAGE})        # never synced
        meta = os.open({str(path)!r}, os.O_WRONLY | os.O_DSYNC)
        os.pwrite(meta, b"M" * 8, 16)                  # durable when it returns
        os.lseek(meta, 32, os.SEEK_SET)
        os.write(meta, b"W" * 8)                       # at the file position
        """,
    )
    restore_synced_state(tmp_path)
    expected = bytearray(b"A" * PAGE)
    expected[16:24] = b"M" * 8
    expected[32:40] = b"W" * 8
    assert path.read_bytes() == bytes(expected)


def test_msync_makes_only_the_synced_range_of_a_mapping_durable(shim: Path, tmp_path: Path) -> None:
    path = tmp_path / "data.mdb"
    _run(
        shim,
        tmp_path,
        f"""
        import mmap, os
        fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)
        os.ftruncate(fd, {2 * PAGE})
        os.fsync(fd)                                   # two zero pages are durable
        mapped = mmap.mmap(fd, {2 * PAGE})
        mapped[0:{PAGE}] = b"A" * {PAGE}
        mapped[{PAGE}:{2 * PAGE}] = b"B" * {PAGE}
        mapped.flush({PAGE}, {PAGE})                   # msync(MS_SYNC) of page 2 only
        """,
    )
    restore_synced_state(tmp_path)
    assert path.read_bytes() == bytes(PAGE) + b"B" * PAGE


def test_deleting_a_file_forgets_what_was_synced_of_it(shim: Path, tmp_path: Path) -> None:
    """A replica that discards itself deletes data.mdb and starts again: the new file owes
    nothing to the old one's synced state."""
    path = tmp_path / "data.mdb"
    _run(
        shim,
        tmp_path,
        f"""
        import os
        fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)
        os.write(fd, b"old")
        os.fsync(fd)
        os.close(fd)
        os.unlink({str(path)!r})
        open({str(path)!r}, "wb").write(b"new, never synced")
        """,
    )
    restore_synced_state(tmp_path)
    assert not path.exists()


def test_files_outside_the_root_or_with_other_names_are_left_alone(
    shim: Path, tmp_path: Path
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    _run(
        shim,
        root,
        f"""
        import os
        for path in ({str(root / "notes.txt")!r}, {str(outside / "data.mdb")!r}):
            fd = os.open(path, os.O_RDWR | os.O_CREAT)
            os.write(fd, b"x")
            os.fsync(fd)
        """,
    )
    assert restore_synced_state(root) == []
    assert (root / "notes.txt").read_bytes() == b"x"
    assert not list(tmp_path.rglob(f"*{SHADOW_SUFFIX}"))


def _lmdb_child(directory: Path, synced: bool) -> str:
    return f"""
        import lmdb
        env = lmdb.open({str(directory)!r}, map_size=16 << 20, sync={synced},
                        metasync={synced})
        for index in range(50):
            with env.begin(write=True) as txn:
                txn.put(b"key-%03d" % index, b"value-%03d" % index)
        # No close: the process just ends, as one killed would, leaving the page cache.
        """


def test_lmdb_commits_with_sync_survive_and_commits_without_are_lost(
    shim: Path, tmp_path: Path
) -> None:
    durable, careless = tmp_path / "durable", tmp_path / "careless"
    durable.mkdir()
    careless.mkdir()
    _run(shim, tmp_path, _lmdb_child(durable, synced=True))
    _run(shim, tmp_path, _lmdb_child(careless, synced=False))
    restored = {file.path.parent.name: file for file in restore_synced_state(tmp_path)}
    assert not restored["durable"].dropped, "every commit was synced"
    assert not restored["careless"].synced, "nothing was ever synced"

    env = lmdb.open(str(durable), map_size=16 << 20, readonly=True, lock=False)
    with env.begin() as txn:
        assert txn.get(b"key-049") == b"value-049"
        assert txn.stat()["entries"] == 50
    env.close()
    assert not (careless / "data.mdb").exists()
