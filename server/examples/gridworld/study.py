"""The grid world study: welcome and checks, instructions, one short turn-based game, a completion code.

`python -m server init my-study` writes a copy of it to start your own study from; this one is served by
`python -m server` with no `--experiment`.
"""

from server.experiment import EndScene, Experiment, GymScene, ScreeningRules, StartScene, StaticScene

experiment = Experiment(
    name="gridworld-example",
    scenes=[
        StartScene(
            title="Welcome",
            html="<p>Thank you for joining. We are checking that your browser can run this study "
            "and preparing the game while you read.</p>",
        ),
        StaticScene(
            "instructions",
            title="How to play",
            html="<p>Move the blue square with the arrow keys and reach the green goal. "
            "Each move costs a little; reaching the goal ends the game.</p>",
        ),
        GymScene(
            "gridworld",
            title="The game",
            environment="gridworld_env:make",
            packages_to_install=(),
            input="turn",
            keys={"ArrowUp": 0, "ArrowRight": 1, "ArrowDown": 2, "ArrowLeft": 3},
            episodes=1,
            max_steps=100,
        ),
        EndScene(html="<p>All done, thank you!</p>", completion_code="PREFLIGHT-EXAMPLE"),
    ],
    screening=ScreeningRules(
        browsers=("chrome", "edge", "firefox", "safari"),
        allow_mobile=False,
        min_width=640,
        min_height=480,
        require_webassembly=True,
        max_rtt_ms=1000,
    ),
)
