"""A real S3 API on loopback for the tests: moto in server mode, reached through s3fs.

``moto.server.ThreadedMotoServer`` serves moto's S3 over HTTP on 127.0.0.1 and a port
the OS picks; clients (this process, build subprocesses, Ray workers) reach it through
the standard ``AWS_ENDPOINT_URL`` and ``AWS_*`` credential variables, as they would a
real S3-compatible store. Nothing in s3fs or botocore is mocked.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

#: The fake credentials moto accepts, in the variables botocore reads.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "capshard-test",
    "AWS_SECRET_ACCESS_KEY": "capshard-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class S3Server:
    """moto's S3 on 127.0.0.1; ``start`` returns once it accepts connections."""

    def __init__(self) -> None:
        self._server: Any = None
        self.endpoint = ""
        self.start_seconds = 0.0

    def start(self) -> S3Server:
        from moto.server import ThreadedMotoServer

        began = time.monotonic()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.start_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def env(self) -> dict[str, str]:
        """The environment that points botocore (and so s3fs) at this server."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def create_bucket(self) -> str:
        """A fresh bucket; returns its name."""
        import boto3

        name = f"capshard-{uuid.uuid4().hex[:12]}"
        client = boto3.client("s3", endpoint_url=self.endpoint, **_boto_credentials())
        client.create_bucket(Bucket=name)
        return name

    def client(self) -> Any:
        """A boto3 S3 client on this server (for what s3fs does not expose, e.g. multipart uploads)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **_boto_credentials())


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }
