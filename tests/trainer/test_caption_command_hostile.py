"""`gato-train caption` on hostile images (issue 20): real PNG bombs made with Pillow are refused
under the converter's pixel rule before decoding, and --image-size takes the converter's syntax
(N, HxW, native) with its limits. The real CLI runs in a child process capped at 3 GiB of
address space (the 1 x 60M PNG once took more than 5 GB)."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.support.hostile_run import GiB, check_one_line, run
from test_evaluate import trained  # noqa: F401 (the fixture: a small trained run)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bombs")
    Image.new("L", (60_000_000, 1)).save(root / "line.png", optimize=True)  # ~60 KB, 60M pixels
    Image.new("L", (9000, 8000)).save(root / "wide.png", optimize=True)  # ~70 KB, 72M pixels
    Image.new("RGB", (40, 24), (200, 10, 10)).save(root / "ok.png")
    return root


def _caption(trained, sandbox, *argv):  # noqa: F811
    return run("trainer.cli", ["caption", "--checkpoint", str(trained["run"]), "--max-new-tokens", "3", *argv],
               sandbox, mem=3 * GiB)


@pytest.mark.parametrize("name,size,needle", [("line.png", [], "would be fitted to"),
                                              ("wide.png", [], "exceeds the limit"),
                                              ("wide.png", ["--image-size", "32x32"], "exceeds the limit")])
def test_png_bombs_are_refused_before_decoding(name, size, needle, bombs, trained, tmp_path):  # noqa: F811
    assert (bombs / name).stat().st_size < 200_000
    r = _caption(trained, tmp_path / "box", str(bombs / name), *size)
    check_one_line(r, 1, str(bombs / name), needle)


@pytest.mark.parametrize("size", [["--image-size", "100000"], ["--image-size", "16", "16"],
                                  ["--image-size", "100"], ["--image-size", "16x"]])
def test_image_size_takes_the_converters_syntax_and_limits(size, bombs, trained, tmp_path):  # noqa: F811
    r = _caption(trained, tmp_path / "box", str(bombs / "ok.png"), *size)
    check_one_line(r, 2)


@pytest.mark.parametrize("size", ["32x32", "32", "native", "16x48"])
def test_a_good_image_is_captioned_with_any_size_syntax(size, bombs, trained, tmp_path):  # noqa: F811
    r = _caption(trained, tmp_path / "box", str(bombs / "ok.png"), "--image-size", size)
    assert r.code == 0 and "Traceback" not in r.err, str(r)
