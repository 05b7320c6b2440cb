"""A throwaway S3-compatible server on loopback for tests (moto's server mode), plus small helpers.

    from s3server import FAKE_AWS_ENV, s3_filesystem, s3_server, s3_uri

    with s3_server() as endpoint:                     # "127.0.0.1:PORT"
        fs = s3_filesystem(endpoint)                  # pyarrow S3FileSystem that may create buckets
        fs.create_dir("bucket")
        ...                                           # s3_uri(endpoint, "bucket/key") for ablate

moto accepts any credentials, but pyarrow's AWS SDK wants some: set FAKE_AWS_ENV in the environment
first (e.g. with pytest's monkeypatch.setenv), never real keys. Each server keeps its buckets in
memory and forgets them when the context ends.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask an instance-metadata service for credentials
}


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """Start moto's S3 server on 127.0.0.1 and a free port; yield its endpoint 'host:port'; stop it after."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log lines in test output
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"{host}:{port}"
    finally:
        server.stop()


def s3_filesystem(endpoint: str, region: str = "us-east-1"):
    """A pyarrow S3FileSystem on the test server (plain http; bucket creation and deletion allowed)."""
    import pyarrow.fs as pafs

    return pafs.S3FileSystem(
        endpoint_override=endpoint, scheme="http", region=region, allow_bucket_creation=True, allow_bucket_deletion=True
    )


def s3_uri(endpoint: str, key: str) -> str:
    """'bucket/path' as a URI pyarrow.fs.FileSystem.from_uri opens on the test server."""
    return f"s3://{key.lstrip('/')}?endpoint_override={endpoint}&scheme=http"
