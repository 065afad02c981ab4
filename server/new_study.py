"""`python -m server init FOLDER`: a study folder to start from, so a researcher never edits the installed package."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from . import __version__

EXAMPLE_DIR = Path(__file__).resolve().parent / "examples" / "gridworld"

STUDY = '''"""{name}: welcome and checks, instructions, one short turn-based game, a completion code.

Serve it with `python -m server --experiment study.py` (run from this folder); see README.md.
"""

from server.experiment import EndScene, Experiment, GymScene, ScreeningRules, StartScene, StaticScene

experiment = Experiment(
    name={name!r},
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
            # gridworld_env.py beside this file; Preflight packs it into a wheel the page installs.
            environment="gridworld_env:make",
            packages_to_install=(),
            input="turn",
            keys={{"ArrowUp": 0, "ArrowRight": 1, "ArrowDown": 2, "ArrowLeft": 3}},
            episodes=1,
            max_steps=100,
        ),
        EndScene(html="<p>All done, thank you!</p>", completion_code="CHANGE-ME"),
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
'''

README = """# {name}

A Preflight {version} study: a welcome page with browser checks, instructions, one game of
`gridworld_env.py` played in the participant's browser (Python runs in the page), and a completion code.

## Run it

    python -m server --experiment study.py

Open the participant URL it prints; the admin view's link (with its token) is printed too.
Participants' records go to `data/`. As tidy tables: `python -m server export --help`.
The scene flow as a diagram: `python -m server scenes --experiment study.py`.

## Change it

- `study.py`: the scenes, their text, the screening rules and the completion code (set your own).
- `gridworld_env.py`: the game; a Gymnasium-style environment with `reset`, `step` and `render`.
  Any module beside `study.py` named in a scene's `environment` is served to the page.
- Packages the game needs in the page go in `packages_to_install`; start-up says how to fetch one
  that is missing into the study's wheelhouse (`.preflight/wheelhouse/`).

`data/` (participants' records) and `.preflight/` (caches Preflight rebuilds) are kept out of git.
"""

GITIGNORE = """# Participants' records: keep them out of version control.
data/
# What Preflight packs and caches at start-up; rebuilt when missing.
.preflight/
__pycache__/
"""


def init(folder: Path) -> list[Path]:
    """Write the study folder; refuses a folder that exists, so nothing of the researcher's is overwritten."""
    if folder.exists():
        raise FileExistsError(f"{folder} already exists; choose a new folder name (nothing was written)")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", folder.resolve().name).strip("-") or "my-study"
    files = {
        "study.py": STUDY.format(name=name),
        "gridworld_env.py": (EXAMPLE_DIR / "gridworld_env.py").read_text(),
        "README.md": README.format(name=name, version=__version__),
        ".gitignore": GITIGNORE,
    }
    folder.mkdir(parents=True)
    written = []
    for filename, text in files.items():
        (folder / filename).write_text(text)
        written.append(folder / filename)
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server init",
        description="Write a new study folder to start from: study.py, a game environment beside it, "
        "a README.md and a .gitignore for data/ and .preflight/.",
    )
    parser.add_argument("folder", type=Path, help="the new study's folder (must not exist yet)")
    args = parser.parse_args(argv)
    try:
        written = init(args.folder)
    except OSError as exc:
        problem = str(exc) if exc.filename is None else f"cannot write {exc.filename}: {exc.strerror}"
        print(f"python -m server init: error: {problem}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    print("\nServe it from its folder, where its data/ is kept:")
    print(f"  cd {args.folder} && python -m server --experiment study.py")
    return 0
