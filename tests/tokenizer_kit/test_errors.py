"""The one error line and the one command-line error policy every CLI follows."""

from __future__ import annotations

import errno

import pytest

from tokenizer_kit.errors import LONG_LINE, first_line, os_error_line, run_command


class BadData(ValueError):
    pass


class BadUsage(ValueError):
    pass


def test_first_line_is_the_first_non_blank_line_or_the_type_name():
    assert first_line(ValueError("bad row 3\nTraceback...\n  more")) == "bad row 3"
    assert first_line(ValueError("\n  \n  second line  \nthird")) == "second line"
    assert first_line(KeyError()) == "KeyError" and first_line(OSError("  ")) == "OSError"
    assert first_line(ValueError("x" * 1000), LONG_LINE) == "x" * LONG_LINE


def test_os_errors_name_their_file_and_the_systems_reason():
    e = OSError(errno.ENOSPC, "No space left on device", "/out/shard-00001.arrow")
    assert os_error_line(e) == "/out/shard-00001.arrow: No space left on device"
    assert os_error_line(OSError("fsspec: bucket gone\ndetails")) == "fsspec: bucket gone"


def _run(exc: BaseException | None, capsys, **kw) -> tuple[int, str, str]:
    def work():
        if exc is not None:
            raise exc
        print("done")
        return 0
    code = run_command("prog", work, (BadData,), usage=(BadUsage,), **kw)
    out, err = capsys.readouterr()
    return code, out, err


def test_the_policy_maps_each_failure_to_one_line_and_its_exit_status(capsys):
    assert _run(None, capsys) == (0, "done\n", "")
    assert _run(BadData("row 7: field 'obs': bad\nmore"), capsys) == (1, "", "prog: error: row 7: field 'obs': bad\n")
    usage_lines = []
    code, _, err = _run(BadUsage("--seq-len must be > 0"), capsys, print_usage=lambda: usage_lines.append(1))
    assert (code, err, usage_lines) == (2, "prog: error: --seq-len must be > 0\n", [1])
    code, _, err = _run(OSError(errno.EROFS, "Read-only file system", "/ro/x"), capsys)
    assert (code, err) == (1, "prog: error: /ro/x: Read-only file system\n")
    code, _, err = _run(MemoryError("cannot allocate 8 GiB"), capsys, memory_hint="lower --batch-size")
    assert (code, err) == (1, "prog: error: out of memory (cannot allocate 8 GiB); lower --batch-size\n")
    code, _, err = _run(RuntimeError("DefaultCPUAllocator: can't allocate memory"), capsys)
    assert code == 1 and err.startswith("prog: error: out of memory (DefaultCPUAllocator")
    assert _run(KeyboardInterrupt(), capsys) == (130, "", "prog: interrupted\n")


def test_a_bug_keeps_its_traceback(capsys):
    with pytest.raises(RuntimeError, match="a bug"):
        _run(RuntimeError("a bug"), capsys)
    with pytest.raises(KeyError):
        _run(KeyError("x"), capsys)
