"""Start interactive-gym 0.1.1 (the predecessor) on 127.0.0.1 for `bench/predecessor.py`.

Run by the predecessor's own venv's python, never by Preflight's:
    /work/tmp/igvenv/bin/python bench/predecessor_server.py --port 8000 --workdir /tmp/ig

The package is started as its README's examples do (`app.run(config)`: Flask-SocketIO on eventlet, no monkey
patching, its own logging), with three changes a benchmark needs:
* a minimal page template, since the package ships none (`render_template("index.html")` would fail);
* its start-up IP lookups (a UDP socket "connected" to 8.8.8.8 and an HTTPS request to api.ipify.org, only to
  print the machine's addresses) stubbed out, so nothing leaves 127.0.0.1;
* the working directory (its `./iglog.log` and `data/`) in a temporary folder.
The experiment is the simplest it accepts: a start scene, one static scene, an end scene.
"""

from __future__ import annotations

import argparse
import os
import socket
import types
from pathlib import Path

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Experiment</title></head>
<body><div id="sceneHeader"></div><div id="sceneBody"></div>
<button id="advanceButton" disabled>Continue</button>
<script>var subjectName = "{{ subject_id }}"; var asyncMode = "{{ async_mode }}";</script>
</body></html>
"""


def _no_lookup(*args: object, **kwargs: object) -> None:
    raise OSError("address lookup disabled for the benchmark: 127.0.0.1 only")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(args.workdir)  # the package writes ./iglog.log at import and data/<scene>/ per participant
    templates = args.workdir / "templates"
    templates.mkdir(exist_ok=True)
    (templates / "index.html").write_text(PAGE)

    from interactive_gym.configurations import experiment_config
    from interactive_gym.scenes import stager, static_scene
    from interactive_gym.server import app

    # The package looks for templates under its own (absent) static/templates; an absolute folder wins the join.
    app.app.template_folder = str(templates)
    # `run()` reads `socket.socket` and `urllib.request.urlopen` through its module's globals: replace those two
    # names there only (eventlet's own sockets are untouched), so each lookup fails at once and prints "unavailable".
    app.socket = types.SimpleNamespace(socket=_no_lookup, AF_INET=socket.AF_INET, SOCK_DGRAM=socket.SOCK_DGRAM)
    app.urllib = types.SimpleNamespace(request=types.SimpleNamespace(urlopen=_no_lookup))

    start = (
        static_scene.StartScene()
        .scene(scene_id="start")
        .display(scene_header="Welcome", scene_body="<p>Thank you for joining.</p>")
    )
    instructions = (
        static_scene.StaticScene()
        .scene(scene_id="instructions")
        .display(scene_header="How to play", scene_body="<p>Reach the green goal.</p>")
    )
    end = static_scene.EndScene().scene(scene_id="end").display(scene_body="<p>All done, thank you!</p>")
    config = (
        experiment_config.ExperimentConfig()
        .experiment(experiment_id="preflight-bench", stager=stager.Stager(scenes=[start, instructions, end]))
        .hosting(host="127.0.0.1", port=args.port)
    )
    app.run(config)


if __name__ == "__main__":
    main()
