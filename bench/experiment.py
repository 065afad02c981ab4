"""The built-in example without its round-trip-time rule, for saturation benchmarks.

A saturated server measures WebSocket ping round trips above the example's 1 s limit and
rightly excludes those participants; throughput figures need every session to walk the same path.
The example's environment module is linked beside this file (`gridworld_env.py`), where the server packs it.
"""

import dataclasses

from server.examples.gridworld.study import experiment as example

experiment = dataclasses.replace(example, screening=dataclasses.replace(example.screening, max_rtt_ms=None))
