"""Talking to models: the manager (fallback, retries, deadline), breakers, the providers.

It knows nothing of chat. It may import only `config`, `types` and `redact`.
"""
