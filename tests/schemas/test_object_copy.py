"""schemas.object_copy: the shard cache's download, hashed on the way, through pyarrow's S3 client
(moto's server) or an fsspec filesystem (memory://); a wrong size is refused before a byte past it."""

from __future__ import annotations

import hashlib
import os

import fsspec
import pytest

from schemas.object_copy import WrongSize, arrow_s3, copy_hashed
from tests.support.s3 import make_bucket


@pytest.fixture
def s3_object(s3_server):
    import s3fs
    data = os.urandom(9 << 20)  # more than one 8 MiB ranged read
    make_bucket("objcopy")
    s3fs.S3FileSystem(skip_instance_cache=True).pipe_file("objcopy/x.arrow", data)
    return "s3://objcopy/x.arrow", data


@pytest.fixture
def memory_object():
    data = os.urandom(3 << 20)
    fsspec.filesystem("memory").pipe_file("/objcopy/x.arrow", data)
    yield "memory://objcopy/x.arrow", data
    fsspec.filesystem("memory").rm("/objcopy", recursive=True)


@pytest.mark.parametrize("which", ["s3_object", "memory_object"])
def test_a_copy_is_the_object_and_its_sha256(which, request, tmp_path):
    url, data = request.getfixturevalue(which)
    assert (arrow_s3(url) is not None) == url.startswith("s3://")  # S3 through pyarrow, the rest through fsspec
    dst = tmp_path / "copy"
    assert copy_hashed(url, dst, len(data)) == hashlib.sha256(data).hexdigest()
    assert dst.read_bytes() == data


@pytest.mark.parametrize("which", ["s3_object", "memory_object"])
def test_a_wrong_size_is_refused_before_writing_past_it(which, request, tmp_path):
    url, data = request.getfixturevalue(which)
    dst = tmp_path / "copy"
    with pytest.raises(WrongSize, match=f"it has (more than {len(data) - 1}|{len(data)}) bytes"):
        copy_hashed(url, dst, len(data) - 1)
    assert not dst.exists() or dst.stat().st_size <= len(data) - 1


@pytest.mark.parametrize("which", ["s3_object", "memory_object"])
def test_a_missing_object_is_file_not_found(which, request, tmp_path):
    url, _ = request.getfixturevalue(which)
    with pytest.raises(FileNotFoundError):
        copy_hashed(url.replace("x.arrow", "gone.arrow"), tmp_path / "copy", 10)
