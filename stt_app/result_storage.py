"""Prefect's result storage on the run's object store: an `S3Bucket` block (prefect-aws) that every worker
names in `PREFECT_DEFAULT_RESULT_STORAGE_BLOCK`, so a flow or task retried on another machine finds the
results and cache records the first attempt persisted (a local result folder is gone with its pod).

The block holds the bucket and a folder only: credentials and the endpoint come from each worker's standard
AWS settings (environment, `~/.aws/`, an instance role), as the run's own store does (stt/store.py).
"""

from __future__ import annotations

from stt.errors import ConfigError

DEFAULT_BLOCK = "stt-results"


def register(url: str, name: str = DEFAULT_BLOCK) -> str:
    """Save (or replace) the S3Bucket block `name` for `s3://bucket/prefix`; return the value of
    PREFECT_DEFAULT_RESULT_STORAGE_BLOCK that names it."""
    if not url.startswith("s3://") or len(url) <= len("s3://"):
        raise ConfigError(f"result storage must be an s3:// URL (s3://bucket/prefix), not {url!r}")
    try:
        from prefect_aws import AwsCredentials, S3Bucket
    except ImportError as exc:
        raise ConfigError("result storage on S3 needs prefect-aws: pip install 'stt[s3]'") from exc
    bucket, _, folder = url.removeprefix("s3://").partition("/")
    # No keys in the block: boto3 resolves them on each worker (AwsCredentials with no fields set).
    S3Bucket(bucket_name=bucket, bucket_folder=folder.strip("/"), credentials=AwsCredentials()).save(
        name, overwrite=True)
    return f"s3-bucket/{name}"
