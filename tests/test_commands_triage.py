"""`lossal triage` error reporting (`keras_lossal/commands/_errors.py`): one line on stderr, an exit code."""

import os
import socket
import struct
import zlib

import pytest

from keras_lossal import cli
from keras_lossal.commands._errors import CommandError, reports_errors


def png_header(height: int, width: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 16


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "a.png").write_bytes(png_header(4, 4))
    return str(tmp_path / "pool")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_triage(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["triage", *argv])
    captured = capsys.readouterr()
    return code, captured.err


def test_reports_errors_turns_user_errors_into_a_line_and_a_code(capsys):
    @reports_errors("demo")
    def run(error):
        raise error

    assert run(CommandError("bad flag", code=3)) == 3
    assert capsys.readouterr().err == "lossal demo: bad flag\n"
    assert run(FileNotFoundError("No such file: 'x'")) == 2
    assert capsys.readouterr().err == "lossal demo: No such file: 'x'\n"
    with pytest.raises(KeyError):  # a bug is not a user error: it still raises
        run(KeyError("bug"))


def test_mode_and_limits_are_checked_first(capsys, folder, tmp_path):
    out = str(tmp_path / "out")
    code, err = run_triage(capsys, folder, "--output", out, "--model", "m", "--server", "http://localhost:8501")
    assert code == 2 and err == "lossal triage: pass exactly one of --model DIR (in-process) or --server URL\n"
    code, err = run_triage(capsys, folder, "--output", out, "--model", str(tmp_path / "missing"), "--top-k", "-1")
    assert code == 2 and err == "lossal triage: expected --top-k >= 0 (0 = no limit). Received: -1\n"


def test_bad_target_and_missing_model_are_one_line_errors(capsys, folder, tmp_path):
    out = str(tmp_path / "out")
    code, err = run_triage(capsys, folder, "--output", out, "--server", "grpc://localhost:99999")
    assert code == 2 and err.startswith("lossal triage: Expected a gRPC target 'host:port' with a port in 1..65535")
    code, err = run_triage(capsys, folder, "--output", out, "--model", str(tmp_path / "missing"))
    assert code == 2 and err.startswith("lossal triage: ") and "missing" in err and len(err.splitlines()) == 1


def test_an_unreachable_server_stops_with_exit_code_3(capsys, folder, tmp_path):
    out = str(tmp_path / "out")
    server = f"http://127.0.0.1:{closed_port()}"
    argv = [folder, "--output", out, "--server", server, "--retries", "0", "--stop-after-server-errors", "1"]
    code, err = run_triage(capsys, *argv)
    assert code == 3
    assert err.startswith("lossal triage: Triage stopped after 1 scoring calls in a row failed on the server side")
    assert err.endswith(f"(0 scored so far, see {out}/failures.jsonl)\n")


def test_label_studio_options_are_checked_before_anything_is_scored(capsys, folder, tmp_path):
    out = str(tmp_path / "out")
    base = [folder, "--output", out, "--model", str(tmp_path / "missing")]
    code, err = run_triage(capsys, *base, "--label-studio-url-prefix", "bucket/pool/")
    assert code == 2 and err.startswith("lossal triage: Expected a Label Studio url_prefix starting with one of")
    assert "Received: url_prefix='bucket/pool/'" in err and len(err.splitlines()) == 1
    code, err = run_triage(capsys, *base, "--label-studio-document-root", str(tmp_path / "nowhere"))
    assert code == 2 and "document root to be an existing directory" in err and "nowhere" in err
    with pytest.raises(SystemExit):  # removed in 0.2 (it made 404 URLs): argparse refuses it
        run_triage(capsys, *base, "--label-studio-prefix", "/x/")
    assert "unrecognized arguments: --label-studio-prefix" in capsys.readouterr().err
    assert not os.path.exists(out)  # refused before the output directory was claimed


def test_labels_read_a_json_list_a_text_file_or_a_comma_list(tmp_path):
    from keras_lossal.commands._errors import CommandError
    from keras_lossal.commands.triage import class_names

    (tmp_path / "classes.json").write_text('["Ankle boot", "Bag", "T-shirt/top"]')
    (tmp_path / "labels.txt").write_text("Ankle boot\nBag\n\nT-shirt/top\n")
    expected = ["Ankle boot", "Bag", "T-shirt/top"]
    assert class_names(str(tmp_path / "classes.json")) == expected  # what lossal train writes
    assert class_names(str(tmp_path / "labels.txt")) == expected
    assert class_names("Ankle boot, Bag,T-shirt/top") == expected
    (tmp_path / "bad.json").write_text('{"classes": ["a"]}')
    with pytest.raises(CommandError, match="expected a JSON list of class names"):
        class_names(str(tmp_path / "bad.json"))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_threshold_is_refused(capsys, folder, tmp_path, value):
    out = str(tmp_path / "out")
    code, err = run_triage(
        capsys, folder, "--output", out, "--model", str(tmp_path / "missing"), f"--threshold={value}"
    )
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err == f"lossal triage: expected --threshold to be a finite number. Received: {float(value)}\n"
    assert not os.path.exists(out)


def test_a_negative_show_is_refused(capsys, folder, tmp_path):
    code, err = run_triage(capsys, folder, "--output", str(tmp_path / "out"), "--model", "m", "--show", "-1")
    assert code == 2 and err == "lossal triage: expected --show >= 0 (0 = none). Received: -1\n"


def test_the_library_refuses_a_threshold_no_score_can_reach(tmp_path):
    from keras_lossal.serving import triage

    for threshold in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"Expected a threshold some predicted loss can reach"):
            triage([], scorer=None, output_dir=str(tmp_path / "out"), threshold=threshold)
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("value", ["0", "-2"])
def test_read_threads_below_one_are_refused(capsys, folder, tmp_path, value):
    out = str(tmp_path / "out")
    code, err = run_triage(capsys, folder, "--output", out, "--model", "m", "--read-threads", value)
    assert code == 2 and err == f"lossal triage: expected --read-threads >= 1. Received: {value}\n"
    assert not os.path.exists(out)


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_commit_seconds_must_be_finite_and_not_negative(capsys, folder, tmp_path, value):
    out = str(tmp_path / "out")
    code, err = run_triage(capsys, folder, "--output", out, "--model", "m", "--commit-seconds", value)
    assert (
        code == 2
        and err == f"lossal triage: expected --commit-seconds to be a finite number >= 0. Received: {float(value)}\n"
    )
    assert not os.path.exists(out)


def test_the_library_refuses_commit_seconds_that_are_not_a_finite_number_at_least_zero(tmp_path):
    from keras_lossal.serving import triage

    for commit_seconds in (-1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match=r"Expected commit_seconds to be a finite number >= 0"):
            triage([], scorer=None, output_dir=str(tmp_path / "out"), commit_seconds=commit_seconds)
    assert not os.path.exists(tmp_path / "out")
