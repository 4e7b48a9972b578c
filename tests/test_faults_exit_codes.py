"""Exit codes and --json error documents, byte-exact through a real subprocess."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_faults_common import assert_no_traceback, error_lines, json_error, run_cli, run_sub, save_tiny_models  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("exit_models"))


def test_success_and_usage_codes(models, tmp_path):
    r = run_sub(["--version"])
    assert r.returncode == 0 and r.stdout.startswith("eqimg ")
    r = run_sub(["info", models["gen"], "--json"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["kind"] == "generator"
    r = run_sub(["sample", "--width", "abc", "--json"])
    assert r.returncode == 2 and json_error(r.stdout)["error"] == "usage_error", r.stderr[-800:]


@pytest.mark.parametrize("args", [["sample", "--bogus-flag"], ["sample", "--width", "abc"], ["info"], ["no-such-command"],
                                  ["sample", "--num", "0"], ["eval", "fid"]])
def test_click_usage_errors(args, capsys):
    rc, out, err = run_cli(args + ["--json"], capsys)
    assert rc == 2, (args, rc, err[-800:])
    doc = json_error(out)
    assert doc["exit_code"] == 2 and doc["error"] == "usage_error", (args, doc)
    assert_no_traceback(err)
    rc, out, err = run_cli(args, capsys)  # without --json: nothing on stdout
    assert rc == 2 and out == "", (args, out)


@pytest.mark.parametrize("args,code,kind", [
    # library-level usage errors (exit 2)
    (["sample", "--width", "30", "--steps", "1"], 2, "usage_error"),  # not a multiple of the column width
    (["sample", "--class", "desert", "--width", "32", "--steps", "1"], 2, "usage_error"),
    (["sample", "--device", "quantum", "--width", "32"], 2, "usage_error"),
    # bad input data (exit 3)
    (["tokenize", "--data", "{tmp}/nope", "--out", "{tmp}/x.h5"], 3, "bad_input"),
    # bad checkpoint (exit 4)
    (["sample", "-g", "{tmp}/missing.pt", "--width", "32", "-o", "{tmp}/x.png"], 4, "bad_checkpoint"),
    # bad latent file (exit 5)
    (["train", "--latents", "{tmp}/text.h5", "--out", "{tmp}/run", "--steps", "1"], 5, "bad_latent_file"),
    (["info", "{tmp}/text.h5"], 5, "bad_latent_file"),
    # resource limit (exit 6)
    (["sample", "--width", "40000000", "--num", "64", "--steps", "1", "-o", "{tmp}/x.png"], 6, "resource_limit"),
])
def test_documented_error_codes(models, tmp_path, capsys, args, code, kind):
    (tmp_path / "text.h5").write_text("not hdf5")
    args = [a.format(tmp=tmp_path) for a in args]
    if args[0] == "sample" and "-g" not in args:
        args += ["-g", str(models["gen"]), "-t", str(models["tok"])]
    if args[0] == "tokenize":
        args += ["--tokenizer", str(models["tok"])]
    rc, out, err = run_cli(args + ["--json"], capsys)
    assert rc == code, (args, rc, err[-1500:])
    doc = json_error(out)
    assert doc["exit_code"] == code and doc["error"] == kind, doc
    assert len(error_lines(err)) == 1, err
    assert_no_traceback(err)
    rc, out, err = run_cli(args, capsys)
    assert rc == code and out == "", out[:300]


def test_error_codes_in_a_real_process(models, tmp_path):
    """The same through a real process: exact exit status, stdout holds only the JSON document."""
    for args, code in ((["sample", "-g", tmp_path / "missing.pt", "--width", 32, "-o", tmp_path / "x.png"], 4),
                       (["sample", "-g", models["gen"], "-t", models["tok"], "--width", 40000000, "--num", 64, "-o", tmp_path / "x.png"], 6)):
        r = run_sub(args + ["--json"])
        assert r.returncode == code, r.stderr[-1500:]
        assert json_error(r.stdout)["exit_code"] == code
        assert_no_traceback(r.stderr)


def test_locked_output_exit_7(models, tmp_path):
    """A second writer on a locked output directory refuses with exit 7 (lock held by this process)."""
    from eqcli_core.io import OutputLock

    (tmp_path / "data" / "a").mkdir(parents=True)
    from test_faults_common import write_images

    write_images(tmp_path / "data", n=2)
    with OutputLock(tmp_path / "out", name=".x.h5.lock"):
        r = run_sub(["tokenize", "--data", tmp_path / "data", "--out", tmp_path / "out" / "x.h5", "--tokenizer", models["tok"], "--json"])
    assert r.returncode == 7, r.stderr[-1500:]
    assert json_error(r.stdout)["error"] == "locked"
    assert not (tmp_path / "out" / "x.h5").exists()


def test_unexpected_error_still_gives_json(monkeypatch, capsys):
    """A bug (not an EqimgError) exits 1; with --json stdout still holds one error document."""
    import eqcli_core.inspect as insp

    def boom(path):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(insp, "describe", boom)
    code, out, err = run_cli(["info", "whatever.pt", "--json"], capsys)
    assert code == 1
    doc = json_error(out)
    assert doc["exit_code"] == 1 and "ZeroDivisionError" in doc["message"]
    assert "Traceback" in err  # a bug keeps its traceback, for the report


def test_disk_full_from_any_writer_exits_8(monkeypatch, capsys):
    import errno

    import eqcli_core.inspect as insp

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(insp, "describe", full)
    code, out, err = run_cli(["info", "whatever.pt", "--json"], capsys)
    assert code == 8 and json_error(out)["error"] == "write_failed"
    assert "No space left" in err
