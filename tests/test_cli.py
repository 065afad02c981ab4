"""The commands as a researcher types them: `python -m server`, `python -m client walk`."""
from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT, served


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_help_documents_the_flags():
    out = run("-m", "server", "--help").stdout
    for flag in ("--host", "--port", "--experiment", "--data-dir", "--screening-timeout", "--preload-timeout",
                 "--pyodide-dir", "--wheelhouse"):
        assert flag in out


def test_a_bad_experiment_is_named_on_the_command_line(tmp_path):
    missing = run("-m", "server", "--experiment", str(tmp_path / "nope.py"))
    assert missing.returncode == 2 and "experiment file not found" in missing.stderr and "Traceback" not in missing.stderr
    bad_ping = run("-m", "server", "--ping-interval", "1", "--ping-timeout", "5")
    assert bad_ping.returncode == 2 and "--ping-timeout (5.0) cannot exceed --ping-interval" in bad_ping.stderr


def test_the_client_walks_a_served_experiment_to_completion(tmp_path):
    data = tmp_path / "data"
    with served(data) as url:
        walked = run("-m", "client", "walk", "--url", url.replace("http", "ws") + "ws")
    assert walked.returncode == 0, walked.stderr
    assert "path: connected → preflight → ready → in_game → ready → completed" in walked.stdout
    assert "completion code: PREFLIGHT-EXAMPLE" in walked.stdout
    assert len(list((data / "sessions").glob("*.msgpack"))) == 1
