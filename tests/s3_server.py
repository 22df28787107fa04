"""A real S3-compatible server on loopback for the RunPod S3 tests: moto in server mode.

:func:`s3_server` starts ``moto.server.ThreadedMotoServer`` on 127.0.0.1 (a free port), creates an
IAM user with an access key allowed ``s3:*``, creates the bucket, and then switches moto's request
authentication on, so a request signed with any other key is refused as it would be by RunPod's
endpoint. The workflow under test talks to it over HTTP from another process (snakemake).
"""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import boto3
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
S3_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
        )

    def keys(self, prefix: str = "") -> dict[str, int]:
        """Every object key under ``prefix`` with its size."""
        paginator = self.client().get_paginator("list_objects_v2")
        found: dict[str, int] = {}
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = item["Size"]
        return found

    def env(self) -> dict[str, str]:
        """The SNAKEMAKE_STORAGE_S3_* variables a pod would export for this endpoint."""
        return {
            "SNAKEMAKE_STORAGE_S3_ENDPOINT_URL": self.endpoint_url,
            "SNAKEMAKE_STORAGE_S3_ACCESS_KEY": self.access_key,
            "SNAKEMAKE_STORAGE_S3_SECRET_KEY": self.secret_key,
            "SNAKEMAKE_STORAGE_S3_REGION": REGION,
        }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _set_auth_after(endpoint: str, count: float) -> None:
    """moto's own switch: requests after the next ``count`` must carry a known, valid signature."""
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=str(count).encode(),
        method="POST",
        # not form-encoded: moto reads the raw body as the number
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        json.loads(response.read())


@contextmanager
def s3_server(bucket: str) -> Iterator[S3Server]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        # Set-up runs before authentication is switched on (moto accepts any key until then).
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="pod")
        iam.put_user_policy(UserName="pod", PolicyName="s3-all", PolicyDocument=json.dumps(S3_ALL))
        key = iam.create_access_key(UserName="pod")["AccessKey"]
        running = S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], bucket)
        running.client().create_bucket(Bucket=bucket)
        _set_auth_after(endpoint, 0)
        yield running
    finally:
        _set_auth_after(endpoint, float("inf"))
        server.stop()
