"""The coop study: two participants, matched by the server, walk two chefs to the same pass together.

Run it with `python -m server --experiment server/examples/coop/study.py` and open the participant URL in two
windows (docs/multiplayer.md). Nobody else within a minute: the computer plays the partner.
"""

from server.agents import Bot, Human, PythonPolicy
from server.experiment import EndScene, Experiment, GymScene, StartScene, StaticScene
from server.multiplayer import FIFO, Multiplayer

KEYS = {"ArrowUp": 0, "ArrowDown": 1, "ArrowLeft": 2, "ArrowRight": 3}

experiment = Experiment(
    name="coop-example",
    scenes=[
        StartScene(title="Welcome", html="<p>Thank you for joining. You will play with another participant.</p>"),
        StaticScene(
            "instructions",
            title="How to play",
            html="<p>Two chefs, teal (top left) and orange (bottom right), share a kitchen. Hold the arrow keys "
            "to move yours; the game says which is yours. Bring both chefs onto the yellow pass.</p>",
        ),
        GymScene(
            "kitchen",
            title="The kitchen",
            environment="kitchen_env:make",
            env_kwargs={"max_steps": 30},
            agents={"chef_0": Human(keys=KEYS, default_action=4), "chef_1": Human(keys=KEYS, default_action=4)},
            input="held",
            fps=10,
            episodes=2,
            max_steps=30,
            show_score=True,
            multiplayer=Multiplayer(
                matchmaker=FIFO(),
                wait_timeout_s=60,
                on_no_match="bot",
                reconnect_timeout_s=20,
                on_partner_loss="bot",
                bot=Bot(PythonPolicy("kitchen_env:toward_pass")),
            ),
        ),
        EndScene(html="<p>All done, thank you!</p>", completion_code="PREFLIGHT-COOP"),
    ],
)
