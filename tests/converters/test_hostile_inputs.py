"""Remote inputs from a hostile bucket (moto's S3 server through s3fs and boto3): object keys with
`../` or absolute parts never become paths outside the input cache, and credentials written in a
URL never appear in a message (issue 20). The real CLI runs in a child process under an address
space limit, with HOME, caches and TMPDIR inside a sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.s3 import make_bucket
from tests.support.hostile_run import check_one_line, run, snapshot


def _put(bucket: str, key: str, body: bytes) -> None:
    import boto3
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body)  # the key exactly as given


@pytest.mark.parametrize("key", ["raw/../../../../../../../../{victim}/planted.txt", "raw/sub/../../../../escape.txt"])
def test_an_object_key_leading_out_of_the_input_cache_is_refused(key, s3_server, sp_model_path, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    name = make_bucket("hostile-keys").removeprefix("s3://")
    _put(name, "raw/a.txt", b"a plain document\n\nanother one\n")
    key = key.format(victim=str(victim).lstrip("/"))
    _put(name, key, b"planted by the bucket\n")
    before = snapshot(tmp_path)
    r = run("converters.cli", ["text", f"s3://{name}/raw", "--text-tokenizer", sp_model_path, "--out",
                               str(tmp_path / "box" / "out"), "--no-progress"], tmp_path / "box", mem=2 << 30)
    check_one_line(r, 1, "object key", "outside")
    after = snapshot(tmp_path)
    escaped = [p for p in set(after) - set(before) if not p.startswith("box")]
    assert escaped == [] and not list(tmp_path.rglob("planted.txt")) and not list(tmp_path.rglob("escape.txt"))
    assert not (tmp_path / "box" / "out" / "manifest.json").exists()
    _delete(name, key)


def _delete(bucket: str, key: str) -> None:
    import boto3
    boto3.client("s3").delete_object(Bucket=bucket, Key=key)


def test_url_credentials_are_never_echoed(s3_server, sp_model_path, tmp_path):
    r = run("converters.cli", ["text", "s3://AKIDSECRETKEY:VERYSECRETVALUE@no-such-bucket-x/raw", "--text-tokenizer",
                               sp_model_path, "--out", str(tmp_path / "box" / "out"), "--no-progress"],
            tmp_path / "box", mem=2 << 30)
    assert r.code in (1, 2), str(r)
    assert "VERYSECRETVALUE" not in r.err and "AKIDSECRETKEY" not in r.err, str(r)
    assert "Traceback" not in r.err
    leaked = [p for p in snapshot(tmp_path) if "SECRET" in p]
    assert leaked == []


def test_url_credentials_are_redacted_in_the_trainer_too(s3_server, tmp_path):
    r = run("trainer.cli", ["--data", "s3://AKIDSECRETKEY:VERYSECRETVALUE@no-such-bucket-y/d", "--out", "run",
                            "--no-progress", "--steps", "1"], tmp_path / "box", mem=4 << 30)
    assert r.code in (1, 2), str(r)
    assert "VERYSECRETVALUE" not in r.err and "Traceback" not in r.err, str(r)
    assert [p for p in snapshot(tmp_path) if "SECRET" in p] == []


def test_redact_removes_user_info_of_every_url():
    from schemas.names import redact
    text = "s3://K:S@b/x and gs://tok@b/y, http://u:p@host:9000/z; plain s3://b/k stays"
    assert redact(text) == "s3://***@b/x and gs://***@b/y, http://***@host:9000/z; plain s3://b/k stays"


def test_a_name_outside_its_root_is_refused(tmp_path: Path):
    from schemas.names import UnsafeNameError, inside
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    assert inside(tmp_path / "root", "a/../b.txt", "t") == (tmp_path / "root" / "b.txt").resolve()
    for bad in ("../x", "/etc/passwd", "link/x", "", "a\x00b", "~/x"):
        with pytest.raises(UnsafeNameError):
            inside(tmp_path / "root", bad, "t")
