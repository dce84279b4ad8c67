"""`keras_lossal.files`: atomic writes, the one way state and output files are written, and the writers' lock."""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from keras_lossal.files import atomic_open, atomic_write, exclusive_lock


def test_atomic_write_replaces_the_whole_file(tmp_path):
    path = str(tmp_path / "queue.csv")
    atomic_write(path, "old\r\n")
    atomic_write(path, "new\nline\n")
    with open(path, "rb") as handle:
        assert handle.read() == b"new\nline\n"  # newlines as given, not translated
    assert os.listdir(tmp_path) == ["queue.csv"]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_partial_one(tmp_path):
    path = str(tmp_path / "summary.json")
    atomic_write(path, '{"scored": 1}\n')
    with pytest.raises(UnicodeEncodeError):
        atomic_write(path, "a" * 100_000 + "\ud800")  # not encodable: the write fails
    with open(path, encoding="utf-8") as handle:
        assert handle.read() == '{"scored": 1}\n'
    assert os.listdir(tmp_path) == ["summary.json"]
    with pytest.raises(RuntimeError, match="stopped"):
        with atomic_open(path, binary=True) as handle:
            handle.write(b"partial")
            raise RuntimeError("stopped")
    with open(path, encoding="utf-8") as handle:
        assert handle.read() == '{"scored": 1}\n'
    assert os.listdir(tmp_path) == ["summary.json"]


def test_atomic_write_to_an_object_store_url():
    tf = pytest.importorskip("tensorflow")
    path = "ram://keras_lossal_test_files/queue.jsonl"
    atomic_write(path, '{"id": "a"}\n{"id": "b"}\n')
    with tf.io.gfile.GFile(path, "r") as handle:
        assert [json.loads(line) for line in handle.read().splitlines()] == [{"id": "a"}, {"id": "b"}]


def test_binary_writes_hold_numpy_archives(tmp_path):
    path = str(tmp_path / "cycle_001.weights.npz")
    weights = [np.arange(6.0).reshape(2, 3), np.ones(4, np.float32)]
    with atomic_open(path, binary=True) as handle:
        np.savez(handle, *weights)
    with np.load(path) as archive:
        for got, expected in zip([archive[f"arr_{i}"] for i in range(2)], weights):
            np.testing.assert_array_equal(got, expected)
    assert os.listdir(tmp_path) == ["cycle_001.weights.npz"]


def test_two_open_writers_never_share_a_temporary_file(tmp_path):
    path = str(tmp_path / "labeled.jsonl")
    with atomic_open(path) as first, atomic_open(path) as second:
        first.write("first\n")
        second.write("second\n")
        temporaries = sorted(os.listdir(tmp_path))
        assert len(temporaries) == 2 and all(name.startswith("labeled.jsonl.") for name in temporaries)
    with open(path, encoding="utf-8") as handle:
        assert handle.read() == "first\n"  # whole, from the writer that finished last
    assert os.listdir(tmp_path) == ["labeled.jsonl"]


# --------------------------------------------------------------------------- the lock
def test_a_second_holder_waits_until_the_first_releases_the_lock(tmp_path):
    path = str(tmp_path / "labeled.jsonl")
    acquired = []

    def second_writer():
        with exclusive_lock(path, timeout=30):
            acquired.append(time.monotonic())

    with exclusive_lock(path) as lock_path:
        assert lock_path == path + ".lock" and os.path.exists(lock_path)
        waiting = threading.Thread(target=second_writer)
        waiting.start()
        time.sleep(0.5)
        assert acquired == []  # blocked for 0.5 s while the first holds the lock
        released = time.monotonic()
    waiting.join(timeout=30)
    assert len(acquired) == 1 and 0 <= acquired[0] - released < 1.0


def test_the_lock_times_out_with_a_message_naming_the_file_and_the_lock_file(tmp_path):
    path = str(tmp_path / "labeled.jsonl")
    with exclusive_lock(path):
        started = time.monotonic()
        with pytest.raises(TimeoutError) as timed_out:
            with exclusive_lock(path, timeout=0.3):
                pass
        waited = time.monotonic() - started
    assert str(timed_out.value) == (
        f"Timed out after 0.3 s waiting for another process writing {path!r} to release its lock file "
        f"{path + '.lock'!r}; retry when it has finished (the lock ends with its process)"
    )
    assert 0.3 <= waited < 2.0
    with exclusive_lock(path, timeout=0):  # released: free at once, even with no wait allowed
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    path = str(tmp_path / "labeled.jsonl")
    holder = (
        "import sys, time; from keras_lossal.files import exclusive_lock\n"
        "with exclusive_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", holder, path], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "locked\n"
        with pytest.raises(TimeoutError):  # another process holds it
            with exclusive_lock(path, timeout=0.2):
                pass
    finally:
        process.kill()  # SIGKILL: no cleanup runs in the holder
        process.wait()
    with exclusive_lock(path, timeout=5):  # the kernel released the dead holder's lock
        assert os.path.exists(path + ".lock")


def test_guarded_reads_refuse_a_fifo_without_blocking_and_keep_the_readers_import(tmp_path):
    from keras_lossal.files import check_regular_file, read_file
    from keras_lossal.serving import readers

    assert readers.read_file is read_file  # moved here from serving/readers.py; the old import still works
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(OSError, match=r"not a regular file \(a FIFO\)"):
        read_file(str(tmp_path / "pipe.png"), max_bytes=100)
    with pytest.raises(OSError, match=r"pipe.png': not a regular file \(a FIFO\)"):
        check_regular_file(str(tmp_path / "pipe.png"))
    with pytest.raises(FileNotFoundError, match="No such file"):
        check_regular_file(str(tmp_path / "missing.jsonl"))
    (tmp_path / "a.jsonl").write_text("{}\n")
    check_regular_file(str(tmp_path / "a.jsonl"))
