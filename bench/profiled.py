"""`python -m server` under cProfile, profiling only between SIGUSR1 and SIGUSR2 (then the profile is written).

The profiler counts the process's CPU time, not wall-clock time: on a shared machine a wall-clock profile
charges whatever function was running when the process was descheduled with the time it waited.

Run: .venv/bin/python -m bench.profiled OUT.prof [server options]   (`python -m bench.multiplayer --profile N`)
"""

from __future__ import annotations

import cProfile
import signal
import sys
import time

from server.__main__ import main

profile = cProfile.Profile(time.process_time)


def begin(*_: object) -> None:
    profile.enable()


def end(*_: object) -> None:
    profile.disable()
    profile.dump_stats(sys.argv[1])


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, begin)
    signal.signal(signal.SIGUSR2, end)
    try:
        sys.exit(main(sys.argv[2:]))
    except KeyboardInterrupt:
        sys.exit(0)
