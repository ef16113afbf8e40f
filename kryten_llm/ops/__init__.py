"""How the service shows itself: health rules, metrics, discovery and heartbeats, control.

Each part is fed by the daemon or the pipeline and never calls back into them. It may import
`config`, `types`, `redact`, `_bus` and `_throttle`.
"""
