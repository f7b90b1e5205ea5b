"""The embedded stack: every service healthy, MLflow's UI and API answer, S3 enforces credentials."""

import subprocess
import sys
import urllib.request

import botocore.exceptions
import pytest

from lakehouse.stack.services import stack_services
from lakehouse.storage import s3_client


def test_status_reports_every_service_up(stack):
    done = subprocess.run(
        [sys.executable, "-m", "lakehouse.stack", "status"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for svc in stack_services(stack):
        assert f"{svc.name}" in done.stdout
    assert "DOWN" not in done.stdout
    assert "topic transactions" in done.stdout


def test_up_is_idempotent(stack):
    done = subprocess.run([sys.executable, "-m", "lakehouse.stack", "up"], capture_output=True, text=True, timeout=120)
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
