"""Preflight's protocol client: simulated participants, reused by the load tester."""
