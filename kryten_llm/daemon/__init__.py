"""The running process: wiring, reaching NATS at start, the banner, the NATS listener, the
in-order dispatcher, reload, systemd.

It starts and stops everything else. It may import the pipeline and every room below it
(decide, reply, llm, ops, config, types); it never imports `tools/`.
"""
