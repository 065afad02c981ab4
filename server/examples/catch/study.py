"""The catch study: a real-time game played with held keys, two episodes, the score shown while playing.

Run it with `python -m server --experiment server/examples/catch/study.py`.
"""

from server.experiment import EndScene, Experiment, GymScene, ScreeningRules, StartScene, StaticScene

experiment = Experiment(
    name="catch-example",
    scenes=[
        StartScene(
            title="Welcome",
            html="<p>Thank you for joining. We are checking that your browser can run this study "
            "and preparing the game while you read.</p>",
        ),
        StaticScene(
            "instructions",
            title="How to play",
            html="<p>Balls fall from the top one at a time. Hold the left and right arrow keys to move "
            "the paddle and catch them: a catch scores a point, a miss loses one. "
            "You will play two rounds of five balls.</p>",
        ),
        GymScene(
            "catch",
            title="Catch",
            environment="catch_env:make",
            env_kwargs={"balls": 5, "max_steps": 300},
            packages_to_install=(),
            input="held",
            fps=30,
            keys={"ArrowLeft": 0, "ArrowRight": 2},
            default_action=1,
            episodes=2,
            max_steps=300,
            show_score=True,
        ),
        EndScene(html="<p>All done, thank you!</p>", completion_code="PREFLIGHT-CATCH"),
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
