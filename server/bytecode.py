"""Bytecode for the stdlib modules a page imports as Pyodide starts, compiled once by that very Pyodide under Node.

Pyodide's `python_stdlib.zip` holds sources only, so every page compiles the ~150 modules that Python, Pyodide
and the game contract import before the runtime is ready: 1.3 s of the 1.9 s `loadPyodide` takes under Node on
this machine. Their bytecode, added to the zip beside their sources as unchecked hash-based `.pyc` members (which
zipimport prefers and takes without reading the source), cuts that to 0.65 s, for about 0.7 MB more brotli.
CPython's own `compile` cannot make it: the bytecode must come from the interpreter that will run it (Python
3.14 in Pyodide), so Node runs the distribution's own `loadPyodide` to compile it. Compiled without column
ranges (`PYTHONNODEBUGRANGES`): a traceback through these modules still shows each source line, without the
`^^^` under it, and the bytecode is 0.24 MB (brotli) smaller.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger("preflight")

CONTRACT = Path(__file__).resolve().parent / "game_contract.py"
TIMEOUT_S = 120.0

COMPILE = """
import importlib.util, marshal, sys, zipfile
import preflight_game_contract  # what the page imports once Python is up belongs to the start too
archive = next(path for path in sys.path if path.endswith(".zip"))
loaded = set(sys.modules)
header = importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little")  # hash-based, unchecked: taken as it is
count = 0
with zipfile.ZipFile("/tmp/in.zip") as source, zipfile.ZipFile("/tmp/out.zip", "w", zipfile.ZIP_STORED) as out:
    for info in source.infolist():
        data = source.read(info)
        member = zipfile.ZipInfo(info.filename, info.date_time)
        member.external_attr = info.external_attr
        out.writestr(member, data)
        name = info.filename
        module = name[:-3].replace("/", ".").removesuffix(".__init__") if name.endswith(".py") else None
        if module in loaded:
            code = compile(data, f"{archive}/{name}", "exec", dont_inherit=True)
            compiled = zipfile.ZipInfo(name + "c", info.date_time)
            compiled.external_attr = info.external_attr
            out.writestr(compiled, header + importlib.util.source_hash(data) + marshal.dumps(code))
            count += 1
count
"""

SCRIPT = """
import {{ loadPyodide }} from {module};
import fs from "node:fs";
const [stdlib, contract, out] = process.argv.slice(2);
const py = await loadPyodide({{
  indexURL: {index}, stdLibURL: stdlib, env: {{ HOME: "/home/pyodide", PYTHONNODEBUGRANGES: "1" }},
}});
py.FS.writeFile("/tmp/in.zip", fs.readFileSync(stdlib));
py.FS.writeFile("/home/pyodide/preflight_game_contract.py", fs.readFileSync(contract));
const count = py.runPython({code});
fs.writeFileSync(out, py.FS.readFile("/tmp/out.zip"));
console.log(count);
"""


RECIPE = hashlib.sha256((COMPILE + SCRIPT).encode() + CONTRACT.read_bytes()).hexdigest()[:8]
"""Part of the cached zip's directory, and so of its URL: another recipe or contract makes another zip."""


class BytecodeError(Exception):
    """The bytecode could not be made; the page then compiles the stdlib itself, as Pyodide does by default."""


class NotNow(BytecodeError):
    """No Node to run Pyodide in, or it ran out of time: not a lasting failure, so the next start tries again."""


def compile_startup(pyodide_dir: Path, stdlib: Path, target: Path) -> int:
    """Write `stdlib` with bytecode beside the sources of the modules imported at start-up to `target`; how many."""
    node = shutil.which("node")
    if node is None:
        raise NotNow("node is not on PATH")
    with tempfile.TemporaryDirectory(prefix="preflight-bytecode-") as tmp:
        script = Path(tmp) / "compile.mjs"
        script.write_text(
            SCRIPT.format(
                module=json.dumps((pyodide_dir / "pyodide.mjs").as_uri()),
                index=json.dumps(f"{pyodide_dir}/"),
                code=json.dumps(COMPILE),
            )
        )
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        try:
            done = subprocess.run(
                [node, str(script), str(stdlib), str(CONTRACT), str(partial)],
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                check=False,
            )
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise BytecodeError(f"node exited with {done.returncode}: {last[:300]}")
            count = int(done.stdout.strip().splitlines()[-1])
            with zipfile.ZipFile(partial) as made:
                if made.testzip() is not None or count < 1:
                    raise BytecodeError("the zip node wrote is damaged or holds no bytecode")
            os.replace(partial, target)
        except subprocess.TimeoutExpired as exc:
            raise NotNow(f"node took more than {TIMEOUT_S:.0f} s") from exc
        except (OSError, ValueError, IndexError, zipfile.BadZipFile) as exc:
            raise BytecodeError(str(exc)) from exc
        finally:
            partial.unlink(missing_ok=True)
    return count
