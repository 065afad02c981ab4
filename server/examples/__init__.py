"""Experiments that ship with Preflight; `gridworld` is what `python -m server` serves by default."""
