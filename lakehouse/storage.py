"""Object storage: S3 clients and ``deltalake`` storage options for the lakehouse root URI."""

from __future__ import annotations

from lakehouse.config import Settings


def s3_client(settings: Settings):
    import boto3
    from botocore.config import Config

    s3 = settings.s3
    return boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
        region_name=s3.region,
        config=Config(retries={"max_attempts": 3}, connect_timeout=5, read_timeout=30),
    )


def ensure_bucket(settings: Settings, bucket: str | None = None) -> None:
    client = s3_client(settings)
    name = bucket or settings.s3.bucket
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if name not in existing:
        client.create_bucket(Bucket=name)


def storage_options(settings: Settings, uri: str) -> dict[str, str] | None:
    """Options for ``deltalake`` to reach ``uri`` (None for local paths)."""
    if not uri.startswith(("s3://", "s3a://")):
        return None
    s3 = settings.s3
    return {
        "AWS_ENDPOINT_URL": s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_REGION": s3.region,
        "AWS_ALLOW_HTTP": "true" if s3.endpoint_url.startswith("http://") else "false",
        # single writer per table (one streaming query): no DynamoDB lock needed
        "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
    }
