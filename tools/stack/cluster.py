"""``make cluster-up``: a Spark standalone master and its workers, started from the PySpark install on loopback.

The pipeline is submitted to it by setting ``spark.master`` to the master's URL (``cluster_env``): the same code,
its executors in the workers' JVMs and Python workers, checkpoints on the S3 server (``spark.cluster``).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from pyspark.find_spark_home import _find_spark_home

from lakehouse.config import Settings
from tools.stack.process import Service


def spark_home() -> Path:
    """The Spark distribution inside the PySpark package (its ``bin/spark-class`` and ``jars``)."""
    return Path(_find_spark_home())


def master_state(settings: Settings) -> dict | None:
    """The master's status (its web UI's JSON), or None if it does not answer."""
    url = f"http://127.0.0.1:{settings.spark.cluster.webui_port}/json/"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.load(resp)
    except (OSError, ValueError):
        return None


def _worker_alive(settings: Settings, webui_port: int) -> bool:
    state = master_state(settings) or {}
    return any(
        w.get("state") == "ALIVE" and str(w.get("webuiaddress", "")).endswith(f":{webui_port}")
        for w in state.get("workers", [])
    )


def _env() -> dict[str, str]:
    return {"SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_NO_DAEMONIZE": "1"}


def cluster_services(settings: Settings) -> list[Service]:
    """The master, then each worker (cores and memory from ``spark.cluster``), in start order."""
    c = settings.spark.cluster
    spark_class = str(spark_home() / "bin" / "spark-class")
    master_cmd = [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                  "--port", str(c.master_port), "--webui-port", str(c.webui_port)]  # fmt: skip
    services = [
        Service(
            "spark-master",
            master_cmd,
            lambda: (master_state(settings) or {}).get("status") == "ALIVE",
            c.master_url,
            env=_env(),
        )
    ]
    for n in range(1, c.workers + 1):
        port = c.webui_port + n
        work_dir = settings.state_path / "spark-workers" / str(n)
        worker_cmd = [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                      "--cores", str(c.worker_cores), "--memory", c.worker_memory, "--work-dir", str(work_dir),
                      "--webui-port", str(port), c.master_url]  # fmt: skip
        services.append(
            Service(
                f"spark-worker-{n}",
                worker_cmd,
                lambda port=port: _worker_alive(settings, port),
                f"http://127.0.0.1:{port}",
                env=_env(),
                prepare=lambda work_dir=work_dir: work_dir.mkdir(parents=True, exist_ok=True),
            )
        )
    return services


def cluster_env(settings: Settings) -> dict[str, str]:
    """The environment overrides that submit the pipeline (or any job) to the cluster instead of local mode."""
    c = settings.spark.cluster
    conf = {**settings.spark.conf, "spark.executor.memory": c.executor_memory,
            "spark.cores.max": str(c.workers * c.worker_cores)}  # fmt: skip
    return {
        "LAKEHOUSE__SPARK__MASTER": c.master_url,
        "LAKEHOUSE__SPARK__CHECKPOINT_ROOT": c.checkpoint_root,
        "LAKEHOUSE__SPARK__CONF": json.dumps(conf),
    }
