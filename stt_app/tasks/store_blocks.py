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
        raise ConfigError("result storage on S3 needs prefect-aws: pip install prefect-aws") from exc
    bucket, _, folder = url.removeprefix("s3://").partition("/")
    # No keys in the block: boto3 resolves them on each worker (AwsCredentials with no fields set).
    S3Bucket(bucket_name=bucket, bucket_folder=folder.strip("/"), credentials=AwsCredentials()).save(
        name, overwrite=True)
    return f"s3-bucket/{name}"


def use_store_credentials(name: str | None) -> None:
    """Load the Prefect `AwsCredentials` block `name` (config `store_credentials`) into this process's AWS
    settings, for the run's store: what it sets (keys, session token, region, endpoint) wins over the worker's
    environment; what it leaves empty stays as the environment has it. The keys live in Prefect's block store,
    never in the config or the logs."""
    if not name:
        return
    import os

    try:
        from prefect_aws import AwsCredentials
    except ImportError as exc:
        raise ConfigError("store_credentials needs prefect-aws: pip install prefect-aws") from exc
    try:
        creds = AwsCredentials.load(name.removeprefix("aws-credentials/"))
    except ValueError as exc:
        raise ConfigError(f"store_credentials: no AwsCredentials block named {name!r} on this Prefect server "
                          f"({exc})") from None
    secret = creds.aws_secret_access_key.get_secret_value() if creds.aws_secret_access_key else None
    token = creds.aws_session_token
    params = creds.aws_client_parameters
    endpoint = getattr(params, "endpoint_url", None) if params else None
    for var, value in (("AWS_ACCESS_KEY_ID", creds.aws_access_key_id), ("AWS_SECRET_ACCESS_KEY", secret),
                       ("AWS_SESSION_TOKEN", token), ("AWS_DEFAULT_REGION", creds.region_name),
                       ("AWS_PROFILE", creds.profile_name), ("AWS_ENDPOINT_URL", endpoint)):
        if value:
            os.environ[var] = str(value)
    try:  # a file system made before this holds the old settings
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
    except ImportError:
        pass
