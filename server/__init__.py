"""Preflight: a participant-session server for browser experiments that run Python in the page."""

__version__ = "0.1.0"
