"""The embedded stack: every service healthy, MLflow's UI and API answer, S3 enforces credentials."""

import subprocess
import sys
import urllib.request
from pathlib import Path

import botocore.exceptions
import pytest

from lakehouse.storage import s3_client
from tools.stack.services import stack_services


def test_status_reports_every_service_up(stack):
    done = subprocess.run([sys.executable, "-m", "tools.stack", "status"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    for svc in stack_services(stack):
        assert f"{svc.name}" in done.stdout
    assert "DOWN" not in done.stdout
    assert "topic transactions" in done.stdout


def test_up_is_idempotent(stack):
    done = subprocess.run([sys.executable, "-m", "tools.stack", "up"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "already up" in done.stdout


def test_mlflow_ui_and_registry_answer(stack):
    with urllib.request.urlopen(stack.mlflow.tracking_uri, timeout=10) as resp:
        assert resp.status == 200
        assert b"MLflow" in resp.read()
    import mlflow

    client = mlflow.MlflowClient(stack.mlflow.tracking_uri)
    exp = client.create_experiment(f"stack-test-{id(client)}")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "x", 1.0)
    assert client.get_run(run.info.run_id).data.metrics["x"] == 1.0


def test_s3_roundtrip_and_credentials_enforced(stack):
    client = s3_client(stack)
    client.put_object(Bucket=stack.s3.bucket, Key="t/hello.txt", Body=b"hello")
    assert client.get_object(Bucket=stack.s3.bucket, Key="t/hello.txt")["Body"].read() == b"hello"
    wrong = s3_client(stack.model_copy(update={"s3": stack.s3.model_copy(update={"secret_key": "wrong"})}))
    with pytest.raises(botocore.exceptions.ClientError):
        wrong.get_object(Bucket=stack.s3.bucket, Key="t/hello.txt")


def test_postgres_and_online_store_are_the_projects_own(stack):
    """Nothing assumes a service the machine happened to run: PostgreSQL and Redis are started by the stack,
    with their data under its state directory (PostgreSQL as an unprivileged user, Redis with its AOF on)."""
    import os

    import redis

    from tools.stack.process import ProcessManager

    manager = ProcessManager(stack.state_path)
    pg = manager.pid("postgres")
    assert pg is not None and manager.pid("online-store") is not None
    assert (stack.state_path / "postgres" / "PG_VERSION").exists()
    assert os.stat(f"/proc/{pg}").st_uid != 0
    assert f"-D {stack.state_path / 'postgres'}" in Path(f"/proc/{pg}/cmdline").read_text().replace("\0", " ")
    online = redis.Redis.from_url(stack.online_store.url)
    assert online.config_get("appendonly")["appendonly"] == "yes"
    assert online.config_get("dir")["dir"] == str(stack.state_path / "online-store")
