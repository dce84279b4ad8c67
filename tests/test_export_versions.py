"""`keras_lossal.export.versions`: version directories, staging and publishing (local and object-store paths).

Object-store publishing runs against TensorFlow's in-memory `ram://` filesystem,
which, like `gs://`, cannot rename a directory with its contents.
"""

import os
import uuid

import numpy as np
import pytest
import tensorflow as tf

from keras_lossal.export import versions


def stage(base: str, files: dict[str, bytes]) -> str:
    """A staged export under `base` holding `files` (relative path -> content)."""
    staging = os.path.join(base, f".tmp-export-{uuid.uuid4().hex}")
    for name, content in files.items():
        tf.io.gfile.makedirs(os.path.dirname(os.path.join(staging, name)))
        with tf.io.gfile.GFile(os.path.join(staging, name), "wb") as handle:
            handle.write(content)
    return staging


def tree(path: str) -> dict[str, bytes]:
    """Every file under `path` (relative path -> content)."""
    found = {}
    for directory, _, names in tf.io.gfile.walk(path):
        for name in names:
            full = os.path.join(directory, name)
            with tf.io.gfile.GFile(full, "rb") as handle:
                found[os.path.relpath(full, path)] = handle.read()
    return found


EXPORT_FILES = {
    "saved_model.pb": b"graph",
    "variables/variables.index": b"index",
    "variables/variables.data-00000-of-00001": b"weights",
    "assets.extra/lossal.json": b"{}",
}


@pytest.fixture
def ram_base():
    base = f"ram://lossal-test-{uuid.uuid4().hex}/models/lossal"
    yield base
    if tf.io.gfile.exists(base):
        tf.io.gfile.rmtree(base)


@pytest.mark.parametrize("value, expected", [(0, 0), (7, 7), ("12", 12), (np.int64(3), 3)])
def test_parse_version_accepts_integers_and_digit_strings(value, expected):
    assert versions.parse_version(value) == expected


@pytest.mark.parametrize("bad", ["v2", "../2", "", " 1", -1, True, 1.5, None])
def test_parse_version_refuses_everything_else(bad):
    with pytest.raises(ValueError, match="version"):
        versions.parse_version(bad)


def test_existing_versions_lists_only_integer_directories(tmp_path):
    assert versions.existing_versions(str(tmp_path / "missing")) == []
    for name in ("10", "2", "notes", ".tmp-export-abc", "03"):
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_bytes(b"a file, not a version")
    assert versions.existing_versions(str(tmp_path)) == [2, 3, 10]


def test_resolve_version_dir_picks_highest_or_requested(tmp_path):
    for name in ("1", "4", ".tmp-export-x"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "saved_model.pb").write_bytes(b"")
    assert versions.resolve_version_dir(str(tmp_path)) == str(tmp_path / "4")
    assert versions.resolve_version_dir(str(tmp_path), version="1") == str(tmp_path / "1")
    assert versions.resolve_version_dir(str(tmp_path / "1")) == str(tmp_path / "1")
    # A version directory with a version: that version of its base path (`--model base/4 --model-version 1`).
    assert versions.resolve_version_dir(str(tmp_path / "4"), version=1) == str(tmp_path / "1")
    assert versions.resolve_version_dir(str(tmp_path / "4"), version="4") == str(tmp_path / "4")
    with pytest.raises(FileNotFoundError, match=r"Version 2 not found under .* available versions: \[1, 4\]"):
        versions.resolve_version_dir(str(tmp_path / "4"), version=2)
    with pytest.raises(FileNotFoundError, match=r"Version 2 not found .* available versions: \[1, 4\]"):
        versions.resolve_version_dir(str(tmp_path), version=2)
    with pytest.raises(ValueError, match="not an integer version"):
        versions.resolve_version_dir(str(tmp_path / ".tmp-export-x"))
    with pytest.raises(FileNotFoundError, match="No such model directory"):
        versions.resolve_version_dir(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="No integer version directory"):
        versions.resolve_version_dir(str(empty))


def test_unused_version_dir_refuses_an_existing_version(tmp_path):
    assert versions.unused_version_dir(str(tmp_path), 3) == str(tmp_path / "3")
    (tmp_path / "3").mkdir()
    with pytest.raises(FileExistsError, match="Version 3 already exists .* refusing to overwrite"):
        versions.unused_version_dir(str(tmp_path), 3)


def test_staging_dir_is_hidden_and_removed_on_error(tmp_path):
    base = str(tmp_path / "new" / "lossal")
    with pytest.raises(RuntimeError):
        with versions.staging_dir(base) as staging:
            assert os.path.dirname(staging) == base and os.path.basename(staging).startswith(".tmp-export-")
            other = stage(base, {"saved_model.pb": b"another export"})  # a concurrent staging is left alone
            os.makedirs(os.path.join(staging, "variables"))
            raise RuntimeError("crash while writing")
    assert not os.path.exists(staging)
    assert versions.existing_versions(base) == []
    assert os.listdir(base) == [os.path.basename(other)]


def test_staging_dir_is_created_and_refuses_a_base_path_that_is_a_file_or_under_one(tmp_path, ram_base):
    with versions.staging_dir(ram_base) as staging:  # object stores too: created before anything is written
        assert tf.io.gfile.isdir(staging)
    (tmp_path / "lossal").write_text("a file")
    with pytest.raises(NotADirectoryError, match=r"base path .*lossal' to be a directory .*it is a file"):
        with versions.staging_dir(str(tmp_path / "lossal")):
            pass
    with pytest.raises(OSError, match=r"Cannot write an export under the base path .*Not a directory") as info:
        with versions.staging_dir(str(tmp_path / "lossal" / "models")):
            pass
    assert not isinstance(info.value, FileExistsError)  # `lossal export` advises another --version for that one
    assert (tmp_path / "lossal").read_text() == "a file"


def test_local_publish_renames_to_next_version(tmp_path):
    base = str(tmp_path)
    (tmp_path / "4").mkdir()
    staging = stage(base, EXPORT_FILES)
    inode = os.stat(os.path.join(staging, "saved_model.pb")).st_ino
    target = versions.publish(staging, base, None)
    assert target == str(tmp_path / "5")
    assert tree(target) == EXPORT_FILES and not os.path.exists(staging)
    assert os.stat(os.path.join(target, "saved_model.pb")).st_ino == inode  # renamed, not copied


def test_local_publish_never_overwrites_an_explicit_version(tmp_path):
    base = str(tmp_path)
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "saved_model.pb").write_bytes(b"the served one")
    staging = stage(base, EXPORT_FILES)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        versions.publish(staging, base, 2)
    assert (tmp_path / "2" / "saved_model.pb").read_bytes() == b"the served one"
    assert tree(staging) == EXPORT_FILES  # left for the caller's staging_dir to remove


def test_local_publish_skips_a_version_a_racer_created(tmp_path, monkeypatch):
    base = str(tmp_path)
    real_rename = os.rename

    def racer_wins(source, target):
        if os.path.basename(target) in ("1", "7"):
            os.makedirs(os.path.join(target, "variables"))  # a non-empty directory: the rename fails
        real_rename(source, target)

    monkeypatch.setattr(versions.os, "rename", racer_wins)
    target = versions.publish(stage(base, EXPORT_FILES), base, None)
    assert target == str(tmp_path / "2") and tree(target) == EXPORT_FILES
    with pytest.raises(FileExistsError, match="appeared while publishing"):
        versions.publish(stage(base, EXPORT_FILES), base, 7)
    assert os.listdir(tmp_path / "7") == ["variables"]


def test_remote_publish_copies_every_file_with_saved_model_last(ram_base, monkeypatch):
    tf.io.gfile.makedirs(os.path.join(ram_base, "1"))
    staging = stage(ram_base, EXPORT_FILES)
    copied = []
    real_copy = tf.io.gfile.copy

    def recording_copy(source, target, overwrite=False):
        copied.append(os.path.relpath(target, os.path.join(ram_base, "2")))
        return real_copy(source, target, overwrite=overwrite)

    monkeypatch.setattr(tf.io.gfile, "copy", recording_copy)
    target = versions.publish(staging, ram_base, None)
    assert target == f"{ram_base}/2"
    assert tree(target) == EXPORT_FILES
    assert sorted(copied) == sorted(EXPORT_FILES) and copied[-1] == "saved_model.pb"
    assert not tf.io.gfile.exists(staging)
    assert versions.existing_versions(ram_base) == [1, 2]
    assert versions.resolve_version_dir(ram_base) == target


def test_remote_publish_never_overwrites(ram_base):
    existing = stage(ram_base, {"saved_model.pb": b"served"})
    versions.publish(existing, ram_base, 3)
    staging = stage(ram_base, EXPORT_FILES)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        versions.publish(staging, ram_base, 3)
    assert tree(f"{ram_base}/3") == {"saved_model.pb": b"served"}
    assert tree(staging) == EXPORT_FILES


def test_remote_publish_refuses_a_file_a_racer_wrote(ram_base, monkeypatch):
    staging = stage(ram_base, EXPORT_FILES)
    real_copy = tf.io.gfile.copy

    def racer_writes_first(source, target, overwrite=False):
        with tf.io.gfile.GFile(target, "wb") as handle:
            handle.write(b"racer")
        return real_copy(source, target, overwrite=overwrite)

    monkeypatch.setattr(tf.io.gfile, "copy", racer_writes_first)
    with pytest.raises(FileExistsError, match="appeared while publishing"):
        versions.publish(staging, ram_base, 1)
    assert set(tree(f"{ram_base}/1").values()) == {b"racer"}
