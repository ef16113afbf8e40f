"""The service API on the bus: other Kryten services use the bot's model, memory and persona.

`models.py` holds the typed requests and answers (the wire contract, docs/API.md);
`service.py` adds the endpoints to the `kryten-llm` micro service and answers them off the
dispatcher, each within its deadline.

May import: config, types, redact, _bus, _throttle, logsetup, context, decide, reply, llm,
memory, commands, ops and pipeline. Nothing imports it but the daemon and tools.
"""
