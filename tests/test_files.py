"""`keras_lossal.files`: atomic writes, the one way state and output files are written."""

import json
import os

import numpy as np
import pytest

from keras_lossal.files import atomic_open, atomic_write


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
