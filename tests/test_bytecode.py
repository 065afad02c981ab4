"""The stdlib the page loads: the distribution's sources, stored, with the start-up modules' bytecode beside them."""

from __future__ import annotations

import json
import logging
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest

from server.bytecode import RECIPE
from server.precompress import STDLIB, STDLIB_DIR, stored_stdlib
from server.runtime import DEFAULT_PYODIDE_DIR

IN_NODE = """
import { loadPyodide } from %(module)s;
const py = await loadPyodide({ indexURL: %(index)s, stdLibURL: process.argv[2] });
console.log(py.runPython(%(code)s));
"""

STARTED = """
import json, sys, traceback
try:
    json.loads("{not json")
except ValueError:
    shown = traceback.format_exc()
import email.message  # not imported at start-up: compiled from its source, as before
json.dumps({"asyncio": sys.modules["asyncio"].__file__, "json.decoder": sys.modules["json.decoder"].__file__,
            "email.message": email.message.__file__, "traceback": shown})
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """The stdlib made in a cache of its own, once for the module (Pyodide under Node: about 7 s)."""
    made = stored_stdlib(DEFAULT_PYODIDE_DIR, tmp_path_factory.mktemp("cache"))
    assert made is not None
    return made


def digest_dir(made: Path) -> Path:
    return made.parent.parent / made.parent.name.removesuffix(f"-{RECIPE}")


def test_the_sources_are_all_there_stored_and_bytecode_is_added_beside_some(made):
    assert made.parent.name.endswith(f"-{RECIPE}") and made.parent.parent.name == STDLIB_DIR
    with zipfile.ZipFile(DEFAULT_PYODIDE_DIR / STDLIB) as original, zipfile.ZipFile(made) as sent:
        names = [i.filename for i in sent.infolist()]
        assert [n for n in names if not n.endswith(".pyc")] == original.namelist()
        assert all(sent.read(name) == original.read(name) for name in original.namelist())
        assert {i.compress_type for i in sent.infolist()} == {zipfile.ZIP_STORED}
        compiled = {n for n in names if n.endswith(".pyc")}
        assert {n[:-1] for n in compiled} <= set(original.namelist())
        # Pyodide's own start (asyncio for its event loop) and what the game contract imports (inspect, random)
        assert {"asyncio/__init__.pyc", "pyodide/ffi/__init__.pyc", "inspect.pyc", "random.pyc"} <= compiled
        assert "email/message.pyc" not in compiled
        assert all(sent.read(n)[4:8] == b"\x01\0\0\0" for n in compiled)  # hash-based, unchecked


def test_it_is_made_once_and_kept(made):
    before = made.stat().st_mtime_ns
    assert stored_stdlib(DEFAULT_PYODIDE_DIR, made.parent.parent.parent) == made
    assert made.stat().st_mtime_ns == before
    assert (digest_dir(made) / STDLIB).is_file()  # the stored stdlib it was made from, kept too


def test_python_starts_from_the_bytecode_and_a_traceback_still_shows_the_source(made, tmp_path):
    script = tmp_path / "started.mjs"
    script.write_text(
        IN_NODE
        % {
            "module": json.dumps((DEFAULT_PYODIDE_DIR / "pyodide.mjs").as_uri()),
            "index": json.dumps(f"{DEFAULT_PYODIDE_DIR}/"),
            "code": json.dumps(STARTED),
        }
    )
    done = subprocess.run(["node", str(script), str(made)], capture_output=True, text=True, timeout=120, check=True)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["asyncio"].endswith("/asyncio/__init__.pyc")
    assert seen["json.decoder"].endswith("/json/decoder.pyc")
    assert seen["email.message"].endswith("/email/message.py")
    assert 'File "/lib/python314.zip/json/decoder.py", line' in seen["traceback"]
    assert "obj, end = self.scan_once(s, idx)" in seen["traceback"]  # the source line, read from the zip


def test_without_node_the_page_gets_the_stored_stdlib_and_it_is_tried_again_later(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with caplog.at_level(logging.WARNING, logger="preflight"):
        sent = stored_stdlib(DEFAULT_PYODIDE_DIR, tmp_path / "cache")
    assert sent is not None and sent == digest_dir(sent) / STDLIB and sent.parent.name == digest_dir(sent).name
    assert "without start-up bytecode" in caplog.text and "node is not on PATH" in caplog.text
    assert not list((tmp_path / "cache").rglob("failed"))


def test_a_node_that_fails_is_reported_once_and_not_run_again(tmp_path, monkeypatch, caplog):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    runs = tmp_path / "runs"
    node = bin_dir / "node"
    node.write_text(f"#!/bin/sh\necho run >> {runs}\necho 'SyntaxError: broken Pyodide' >&2\nexit 3\n")
    node.chmod(node.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bin_dir))
    with caplog.at_level(logging.WARNING, logger="preflight"):
        first = stored_stdlib(DEFAULT_PYODIDE_DIR, tmp_path / "cache")
        second = stored_stdlib(DEFAULT_PYODIDE_DIR, tmp_path / "cache")
    assert first == second and first is not None and not first.parent.name.endswith(RECIPE)
    assert runs.read_text() == "run\n"
    assert "node exited with 3: SyntaxError: broken Pyodide" in caplog.text
    (failed,) = (tmp_path / "cache").rglob("failed")
    assert "broken Pyodide" in failed.read_text()
