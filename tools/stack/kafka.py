"""The stack's Apache Kafka broker: one combined broker + controller node in KRaft mode, on loopback.

It runs from the Maven jars that ``make install`` fetched (``jvm/kafka/pom.xml`` → ``eventlog.broker_jars``), with
its log dirs under ``<state>/kafka``. The storage is formatted once, with a cluster id kept beside it.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from pathlib import Path

from lakehouse.config import Settings
from tools.stack.process import Service, ServiceError

LOG4J2 = """\
Configuration:
  name: kafka-broker
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
    RollingFile:
      - name: ServerAppender
        fileName: "{logs}/server.log"
        filePattern: "{logs}/server.log.%i"
        PatternLayout:
          pattern: "[%d] %p %m (%c)%n"
        SizeBasedTriggeringPolicy:
          size: 50MB
        DefaultRolloverStrategy:
          max: 3
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
          level: WARN
        - ref: ServerAppender
    Logger:
      - name: kafka.request.logger
        level: WARN
      - name: state.change.logger
        level: WARN
"""


def _host_port(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return host or "127.0.0.1", int(port)


def server_properties(settings: Settings, data: Path) -> str:
    """The broker's configuration: single node, replication factor 1 everywhere, no topic auto-creation."""
    host, port = _host_port(settings.eventlog.kafka_bootstrap)
    controller = f"{host}:{settings.eventlog.controller_port}"
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": controller,
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{controller}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data / "data"),
        "num.partitions": "4",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "auto.create.topics.enable": "false",
        "group.initial.rebalance.delay.ms": "0",
        # after a SIGKILL the restarted node waits out its old registration (DUPLICATE_BROKER_REGISTRATION): keep
        # that short
        "broker.session.timeout.ms": "3000",
        "broker.heartbeat.interval.ms": "1000",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.retention.hours": "168",
        "log.segment.bytes": str(128 * 1024 * 1024),
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _cluster_id() -> str:
    """A Kafka cluster id: a random UUID, base64url without padding (as ``StorageTool random-uuid`` prints)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def _java() -> str:
    found = shutil.which("java")
    if not found:
        raise ServiceError("java not found: run `make install` (it installs Java 17 with apt)")
    return found


def kafka_service(settings: Settings) -> Service:
    ev = settings.eventlog
    data = settings.state_path / "kafka"
    jars = settings.path(ev.broker_jars)
    props, log4j = data / "server.properties", data / "log4j2.yaml"
    classpath = f"{jars}/*"

    def prepare() -> None:
        if not any(jars.glob("kafka_2.13-*.jar")):
            raise ServiceError(f"no Kafka broker jars in {jars}: run `make install` (it fetches them with mvn)")
        data.mkdir(parents=True, exist_ok=True)
        props.write_text(server_properties(settings, data))
        log4j.write_text(LOG4J2.format(logs=data / "logs"))
        if (data / "data" / "meta.properties").exists():
            return
        cluster = data / "cluster-id"
        if not cluster.exists():
            cluster.write_text(_cluster_id())
        cluster_id = cluster.read_text().strip()
        format_cmd = [_java(), "-cp", classpath, "kafka.tools.StorageTool", "format", "--standalone"]
        done = subprocess.run([*format_cmd, "-t", cluster_id, "-c", str(props)], capture_output=True, text=True)
        if done.returncode != 0:
            raise ServiceError(f"formatting the Kafka storage in {data} failed: {(done.stderr or done.stdout).strip()}")

    cmd = [
        _java(),
        f"-Xms{ev.broker_heap}",
        f"-Xmx{ev.broker_heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        classpath,
        "kafka.Kafka",
        str(props),
    ]
    return Service(
        "kafka",
        cmd,
        lambda: _answers(ev.kafka_bootstrap),
        f"kafka://{ev.kafka_bootstrap}",
        ready_timeout_s=90,
        stop_timeout_s=40,
        prepare=prepare,
    )


def _answers(bootstrap: str) -> bool:
    """The broker serves metadata requests and leads every partition it has: a restarted broker answers
    metadata requests before it has loaded its logs, and until then reads fail with NOT_LEADER_FOR_PARTITION."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        topics = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(timeout=2).topics
    except KafkaException:
        return False
    return all(p.leader >= 0 and p.error is None for t in topics.values() for p in t.partitions.values())
