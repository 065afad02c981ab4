"""The commands as a researcher types them: `python -m server` (and its `scenes`), `python -m client walk`."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from client.harness import ROOT, served


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_help_documents_the_flags():
    out = run("-m", "server", "--help").stdout
    for flag in (
        "--host",
        "--port",
        "--experiment",
        "--data-dir",
        "--screening-timeout",
        "--preload-timeout",
        "--pyodide-dir",
        "--wheelhouse",
        "--admin-token",
        "--version",
    ):
        assert flag in out
    assert "python -m server scenes --help" in out and "python -m server init FOLDER" in out


def test_scenes_draws_the_experiment_the_server_would_serve(tmp_path):
    mermaid = run("-m", "server", "scenes")
    assert mermaid.returncode == 0, mermaid.stderr
    assert "title: Scene flow of gridworld-example" in mermaid.stdout
    assert "gridworld (game, needs Python in the page)" in mermaid.stdout
    out = tmp_path / "flow.svg"
    svg = run("-m", "server", "scenes", "--format", "svg", "-o", str(out))
    assert svg.returncode == 0 and svg.stdout == "", svg.stderr
    drawn = out.read_text()
    assert "<svg" in drawn and "gridworld (game, needs Python in the page)" in drawn


def test_a_bad_experiment_is_named_on_the_command_line(tmp_path):
    missing = run("-m", "server", "--experiment", str(tmp_path / "nope.py"))
    assert (
        missing.returncode == 2 and "experiment file not found" in missing.stderr and "Traceback" not in missing.stderr
    )
    (tmp_path / "typo.py").write_text("experiment = Experiment(\n")
    typo = run("-m", "server", "--experiment", str(tmp_path / "typo.py"))
    assert typo.returncode == 2 and "typo.py failed to load: SyntaxError: " in typo.stderr
    assert "typo.py, line 1)" in typo.stderr and "importlib" not in typo.stderr
    bad_ping = run("-m", "server", "--ping-interval", "1", "--ping-timeout", "5")
    assert bad_ping.returncode == 2 and "--ping-timeout (5.0) cannot exceed --ping-interval" in bad_ping.stderr
    weak = run("-m", "server", "--admin-token", "secret")
    assert weak.returncode == 2 and "--admin-token must be at least 16 characters" in weak.stderr


@pytest.mark.parametrize(
    "flag, value, wanted",
    [
        ("--screening-timeout", "nan", "a positive number"),  # nan passes every comparison: it excluded everyone
        ("--grace", "inf", "a positive number"),
        ("--rate-limit", "0", "a positive number"),
        ("--port", "abc", "a port number from 0 to 65535 (0: any free port)"),
        ("--max-sessions", "1.5", "a whole number of at least 1"),
    ],
)
def test_a_flag_value_out_of_its_range_is_named(flag, value, wanted):
    refused = run("-m", "server", flag, value)
    assert refused.returncode == 2 and f"argument {flag}: must be {wanted}, got '{value}'" in refused.stderr
    assert "Traceback" not in refused.stderr and "_positive" not in refused.stderr


def test_a_port_or_data_directory_that_cannot_be_used_is_named(tmp_path):
    too_high = run("-m", "server", "--port", "99999")  # would wrap around to port 34463 if passed on
    assert too_high.returncode == 2 and "--port: must be a port number from 0 to 65535" in too_high.stderr
    (tmp_path / "file").write_text("")
    not_a_dir = run("-m", "server", "--port", "0", "--data-dir", str(tmp_path / "file"))
    assert not_a_dir.returncode == 2 and "Traceback" not in not_a_dir.stderr
    assert f"python -m server: error: Not a directory: {tmp_path / 'file'}" in not_a_dir.stderr
    assert "(the data directory, --data-dir)" in not_a_dir.stderr


def test_port_0_serves_on_a_free_port_and_prints_it(tmp_path):
    argv = [sys.executable, "-m", "server", "--port", "0", "--data-dir", str(tmp_path / "data")]
    with subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = next(line for line in proc.stdout if line.startswith("Participant URL: "))
            url = line.split(": ", 1)[1].strip()
            assert not url.endswith(":0/")
            with urllib.request.urlopen(url, timeout=10) as page:
                assert page.status == 200
        finally:
            proc.terminate()


def test_behind_a_proxy_the_printed_urls_are_the_public_origin(tmp_path):
    argv = [sys.executable, "-m", "server", "--port", "0", "--data-dir", str(tmp_path / "data")]
    argv += ["--public-origin", "https://study.example.org"]
    with subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            assert proc.stdout is not None
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("Admin view: "):
                    break
        finally:
            proc.terminate()
    assert "Participant URL: https://study.example.org/\n" in lines
    assert any(line.startswith("Admin view: https://study.example.org/admin?token=") for line in lines)
    assert any(line.startswith("Listening on http://127.0.0.1:") for line in lines)


def test_walk_names_a_bad_url_and_a_server_that_is_not_there():
    bad = run("-m", "client", "walk", "--url", "notaurl")
    assert bad.returncode == 2 and "--url: must be a ws:// or wss:// URL, got notaurl" in bad.stderr
    with socket.socket() as unused:  # bound, never listening: a port nothing answers on
        unused.bind(("127.0.0.1", 0))
        gone = run("-m", "client", "walk", "--url", f"ws://127.0.0.1:{unused.getsockname()[1]}/ws")
    assert gone.returncode == 1 and "Connection refused" in gone.stderr and "Traceback" not in gone.stderr
    assert gone.stdout == ""  # nothing claims it connected


def test_the_client_walks_a_served_experiment_to_completion(tmp_path):
    data = tmp_path / "data"
    with served(data) as url:
        walked = run("-m", "client", "walk", "--url", url.replace("http", "ws") + "ws")
    assert walked.returncode == 0, walked.stderr
    assert "path: connected → preflight → ready → in_game → ready → completed" in walked.stdout
    assert "completion code: PREFLIGHT-EXAMPLE" in walked.stdout
    assert len(list((data / "sessions").glob("*.msgpack"))) == 1


def test_walk_names_a_wrong_path_and_a_refused_hello(tmp_path):
    with served(tmp_path / "data") as url:
        ws = url.replace("http", "ws")
        wrong = run("-m", "client", "walk", "--url", ws + "wrong")
        page = run("-m", "client", "walk", "--url", ws)
        bad_id = run("-m", "client", "walk", "--url", ws + "ws", "--participant-id", "bad id!", "--timeout", "5")
        assert run("-m", "client", "walk", "--url", ws + "ws", "--participant-id", "p-1").returncode == 0
        again = run("-m", "client", "walk", "--url", ws + "ws", "--participant-id", "p-1", "--timeout", "5")
    assert wrong.returncode == 1 and f"{ws}wrong: no WebSocket endpoint there (HTTP 404)" in wrong.stderr
    assert page.returncode == 1 and f"{ws}: not a WebSocket endpoint" in page.stderr
    refused = "error: the server refused hello:"
    assert bad_id.returncode == 1 and f"{refused} bad_message: hello: participant_id" in bad_id.stderr
    assert again.returncode == 1 and f"{refused} already_participated" in again.stderr
    for walked in (wrong, page, bad_id, again):
        assert "Traceback" not in walked.stderr and walked.stdout == ""


def status(url: str) -> int:
    """The status a browser ends at: it follows the redirect that swaps a URL token for the admin cookie."""
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    try:
        with browser.open(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def server_log(tmp_path, url: str) -> str:
    return (tmp_path / f"server-{url.rstrip('/').rsplit(':', 1)[1]}.log").read_text()


def test_the_admin_token_is_generated_and_printed_unless_given(tmp_path):
    with served(tmp_path / "data") as url:
        [line] = [x for x in server_log(tmp_path, url).splitlines() if x.startswith("Admin view: ")]
        token = line.split("token=")[1]
        assert line == f"Admin view: {url}admin?token={token}" and len(token) >= 32
        assert status(f"{url}admin/api/counts?token={token}") == 200
        assert status(f"{url}admin/api/counts") == 403
        assert token not in server_log(tmp_path, url).split(line, 1)[1]  # the access log blanks it out
    given = "a-token-of-our-own-choosing"
    with served(tmp_path / "data2", "--admin-token", given) as url:
        log = server_log(tmp_path, url)
        assert f"Admin view: {url}admin (token from --admin-token)" in log and given not in log
        assert status(f"{url}admin/api/counts?token={given}") == 200
