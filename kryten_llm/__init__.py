"""kryten-llm: an in-character LLM chat bot for CyTube channels on the Kryten NATS bus."""

__version__ = "0.1.0"
