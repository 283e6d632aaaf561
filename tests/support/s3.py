"""Object storage for tests and benchmarks: a real S3 API server on 127.0.0.1 (moto's server mode),
reached through s3fs. moto and s3fs are imported where used: every test session imports this
module through conftest, and most sessions never start the server."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def moto_s3_server() -> Iterator[str]:
    """Start moto's S3 server on a free port of 127.0.0.1 and point the standard AWS_* variables
    at it (in os.environ, so subprocesses such as the CLIs and torchrun inherit them); yields the
    endpoint URL. Buckets: `make_bucket(name)`."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log lines among the CLIs' stderr
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    keys = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_bucket(name: str) -> str:
    """Create a bucket on the running S3 server (the s3_server fixture); returns its s3:// URL."""
    import s3fs
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    if not fs.exists(name):
        fs.mkdir(name)
    return f"s3://{name}"


def upload_dir(local, url: str) -> str:
    """Copy a local shard directory's files to `url` (through s3fs); returns url."""
    import s3fs
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    for p in sorted(Path(local).iterdir()):
        if p.is_file():
            fs.put_file(str(p), f"{url.removeprefix('s3://')}/{p.name}")
    return url
