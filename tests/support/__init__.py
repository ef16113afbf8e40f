"""Real test doubles: a nats-server process, local LLM HTTP servers, and bridge-shaped events."""
