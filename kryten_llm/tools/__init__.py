"""Operator and developer tools around the daemon: demo, replay, stats, the bundled nats-server.

They drive the real daemon and pipeline from outside; nothing in the daemon imports them.
"""
