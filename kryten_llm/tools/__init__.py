"""Operator and developer tools around the daemon: demo, check, ask, replay, stats, nats-server.

They drive the real daemon and pipeline from outside; nothing in the daemon imports them.
"""
