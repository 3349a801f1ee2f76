"""s3:// against a real S3-compatible server (moto's, on loopback, started here) through s3fs.

The endpoint goes in ``DataPolicy.s3_endpoint_url``; credentials are fake and set only inside
each test. The address rules stay in force: the loopback endpoint is refused unless the policy
allows private addresses, and a plain-http endpoint needs ``allow_insecure_http``.
"""

from __future__ import annotations

import contextlib
import io
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lrprobe.worker.intake.data.policy import DataPolicy
from lrprobe.worker.intake.data.references import open_dataset
from lrprobe.worker.intake.errors import IntakeError

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

BUCKET = "lrprobe-data"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(endpoint: str, fake_credentials: None) -> str:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buffer, x=rng.normal(size=(40, 6)).astype(np.float32), y=rng.integers(0, 3, 40))
    client.put_object(Bucket=BUCKET, Key="sets/train.npz", Body=buffer.getvalue())
    return BUCKET


def _policy(tmp_path: Path, endpoint: str, **overrides: Any) -> DataPolicy:
    settings: dict[str, Any] = {
        "allowed_hosts": (f"s3://{BUCKET}",),
        "allow_private_addresses": True,
        "allow_insecure_http": True,
        "cache_dir": tmp_path / "cache",
        "s3_endpoint_url": endpoint,
        "timeout_s": 10.0,
    }
    settings.update(overrides)
    return DataPolicy(**settings)


def _refused(uri: str, policy: DataPolicy) -> IntakeError:
    with pytest.raises(IntakeError) as info:
        open_dataset(uri, policy)
    return info.value


def test_allow_listed_bucket_loads(tmp_path: Path, endpoint: str, bucket: str) -> None:
    dataset = open_dataset(f"s3://{bucket}/sets/train.npz", _policy(tmp_path, endpoint))

    assert dataset.num_examples == 40
    assert tuple(dataset.x.shape) == (40, 6)
    assert len(list((tmp_path / "cache" / "remote").rglob("train.npz"))) == 1


def test_endpoint_from_the_environment_is_used(
    tmp_path: Path, endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    policy = _policy(tmp_path, endpoint, s3_endpoint_url=None)

    assert open_dataset(f"s3://{bucket}/sets/train.npz", policy).num_examples == 40


def test_missing_key_is_data_not_found(tmp_path: Path, endpoint: str, bucket: str) -> None:
    error = _refused(f"s3://{bucket}/sets/none.npz", _policy(tmp_path, endpoint))
    assert error.code == "data_not_found"


def test_bucket_not_on_the_allow_list_is_refused(
    tmp_path: Path, endpoint: str, bucket: str
) -> None:
    error = _refused("s3://other-bucket/sets/train.npz", _policy(tmp_path, endpoint))
    assert error.code == "host_not_allowed"
    assert "other-bucket" in error.message


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"allow_private_addresses": False}, "address_not_allowed"),
        ({"allow_insecure_http": False}, "data_ref_refused"),
    ],
    ids=["loopback", "plain-http"],
)
def test_endpoint_is_held_to_the_address_rules(
    tmp_path: Path, endpoint: str, bucket: str, overrides: dict[str, Any], code: str
) -> None:
    error = _refused(f"s3://{bucket}/sets/train.npz", _policy(tmp_path, endpoint, **overrides))
    assert error.code == code
    assert not (tmp_path / "cache" / "remote").exists() or not any(
        (tmp_path / "cache" / "remote").rglob("train.npz")
    )


def test_link_local_endpoint_is_refused_even_when_private_is_allowed(
    tmp_path: Path, fake_credentials: None
) -> None:
    policy = _policy(tmp_path, "http://169.254.169.254")
    error = _refused(f"s3://{BUCKET}/sets/train.npz", policy)
    assert error.code == "address_not_allowed"


def test_malformed_endpoint_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="s3_endpoint_url"):
        DataPolicy(s3_endpoint_url="minio.internal:9000")
