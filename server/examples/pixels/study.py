"""The pixels study: a game drawn as an RGB image, one short episode of 20 steps (2 s at 10 steps a second).

Run it with `python -m server --experiment server/examples/pixels/study.py`.
"""

from server.experiment import EndScene, Experiment, GymScene, ScreeningRules, StartScene, StaticScene

experiment = Experiment(
    name="pixels-example",
    scenes=[
        StartScene(
            title="Welcome",
            html="<p>Thank you for joining. We are checking that your browser can run this study "
            "and preparing the game while you read.</p>",
        ),
        StaticScene(
            "instructions",
            title="How to play",
            html="<p>Press the arrow keys to move the white cursor onto the dim red squares and light them. "
            "Be quick: the round lasts two seconds.</p>",
        ),
        GymScene(
            "pixels",
            title="Light the pixels",
            environment="pixels_env:make",
            env_kwargs={"targets": 6, "steps": 20},
            packages_to_install=(),
            input="press",
            fps=10,
            keys={"ArrowUp": 1, "ArrowRight": 2, "ArrowDown": 3, "ArrowLeft": 4},
            default_action=0,
            episodes=1,
            max_steps=20,
            show_score=True,
        ),
        EndScene(html="<p>All done, thank you!</p>", completion_code="PREFLIGHT-PIXELS"),
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
