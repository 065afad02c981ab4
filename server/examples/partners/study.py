"""The partners study: the participant plays a cooperative game with an AI partner, first a Python policy,
then a trained ONNX model (server/examples/partners/models/partner.onnx, written by make_model.py).

Run it with `python -m server --experiment server/examples/partners/study.py`.
"""

from server.agents import Bot, Human, OnnxPolicy, PythonPolicy
from server.experiment import EndScene, Experiment, GymScene, StartScene, StaticScene

KEYS = {"ArrowUp": 0, "ArrowDown": 1, "ArrowLeft": 2, "ArrowRight": 3}

experiment = Experiment(
    name="partners-example",
    scenes=[
        StartScene(title="Welcome", html="<p>Thank you for joining. The game and your partner are loading.</p>"),
        StaticScene(
            "instructions",
            title="How to play",
            html="<p>You are the green square; your partner is the orange one. Hold the arrow keys to move. "
            "Every star either of you reaches scores a point for both.</p>",
        ),
        GymScene(
            "coop_python",
            title="With a scripted partner",
            environment="coop_env:make",
            env_kwargs={"stars": 5, "max_steps": 200},
            agents={
                "chef_0": Human(keys=KEYS, default_action=4),
                "chef_1": Bot(PythonPolicy("policies:greedy"), frame_skip=2),
            },
            input="held",
            fps=10,
            episodes=1,
            max_steps=200,
            show_score=True,
        ),
        GymScene(
            "coop_onnx",
            title="With a trained partner",
            environment="coop_env:make",
            env_kwargs={"stars": 5, "max_steps": 200},
            agents={
                "chef_0": Human(keys=KEYS, default_action=4),
                "chef_1": Bot(OnnxPolicy("models/partner.onnx", input_size=6), frame_skip=2, record_policy=True),
            },
            input="held",
            fps=10,
            episodes=1,
            max_steps=200,
            show_score=True,
        ),
        EndScene(html="<p>All done, thank you!</p>", completion_code="PREFLIGHT-PARTNERS"),
    ],
)
