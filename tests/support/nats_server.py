"""The real nats-server for tests: the same launcher the demo and benchmarks use."""

from kryten_llm.tools.natsd import NatsServer, start_nats_server
from kryten_llm.tools.simulate import free_port

__all__ = ["NatsServer", "free_port", "start_nats_server"]
