"""A two-player game at 10 fps for the multiplayer benchmark (`python -m bench.multiplayer`).

The pages never run here (the walk clients play in lockstep without an environment), so the game names the
grid world module linked beside this file only so that the server can pack it.
"""

from server.agents import Human
from server.experiment import EndScene, Experiment, GymScene, ScreeningRules, StartScene
from server.multiplayer import FIFO, Multiplayer

KEYS = {"ArrowUp": 0, "ArrowRight": 1, "ArrowDown": 2, "ArrowLeft": 3}

experiment = Experiment(
    name="multiplayer-bench",
    scenes=[
        StartScene(),
        GymScene(
            "duo",
            environment="gridworld_env:make",
            packages_to_install=(),
            agents={"p0": Human(keys=KEYS, default_action=0), "p1": Human(keys=KEYS, default_action=0)},
            input="held",
            fps=10,
            episodes=1,
            max_steps=100_000,
            multiplayer=Multiplayer(
                matchmaker=FIFO(), wait_timeout_s=120, input_delay=2, reconnect_timeout_s=5, start_timeout_s=120
            ),
        ),
        EndScene(completion_code="BENCH"),
    ],
    screening=ScreeningRules(browsers=("chrome",), allow_mobile=False, require_webassembly=True),
)
