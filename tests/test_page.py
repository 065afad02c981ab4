"""The page is a view: it holds no copy of the lifecycle or the protocol, only what /client/lifecycle.js exports."""

from __future__ import annotations

import re
from pathlib import Path

from server.page_module import page_constants
from server.protocol import CLIENT_TYPES, PRELOAD_STAGES, PRELOAD_STATUSES, SERVER_TYPES, Close, Code
from statemachine import OUTCOMES, state_names

WEB = Path(__file__).resolve().parent.parent / "client" / "web"
LITERAL = re.compile(
    r"""//[^\n]*|/\*.*?\*/|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`(?:[^`\\]|\\.)*`|\b\d{4}\b""", re.S
)


def lifecycle_words() -> set[str]:
    """Every name the page could copy: states and region leaves, outcomes, codes, close codes, stages, statuses."""
    names = {part for name in state_names() for part in name.split(".")}
    return (
        names
        | set(OUTCOMES)
        | {c.value for c in Code}
        | {str(int(c)) for c in Close}
        | set(PRELOAD_STAGES)
        | set(PRELOAD_STATUSES)
        | (set(CLIENT_TYPES) & names)  # a message type spelled like a region would still be a copy
        | (set(SERVER_TYPES) & names)
    )


PACKAGE_NAMES = re.compile(r"""(?:loadPackage|pyimport)\(["'][\w.-]+["']\)""")
"""Python packages the page loads by name (micropip shares its name with the stage that loads it)."""


def literals(source: str) -> list[str]:
    """String literals and four-digit numbers in a script, comments skipped; template text is kept whole."""
    source = PACKAGE_NAMES.sub("", source)
    out = []
    for token in LITERAL.findall(source):
        if token.startswith(("//", "/*")):
            continue
        out.append(token[1:-1] if token[0] in "\"'`" else token)
    return out


def test_no_script_of_the_page_copies_a_lifecycle_name():
    words = lifecycle_words()
    scripts = sorted(WEB.glob("*.js"))
    assert scripts and not (WEB / "lifecycle.js").exists()  # the generated module is served, never checked in
    copies = {path.name: sorted({lit for lit in literals(path.read_text()) if lit in words}) for path in scripts}
    assert {name: found for name, found in copies.items() if found} == {}


def test_the_checker_finds_a_copy_when_there_is_one():
    planted = 'if (state === "in_game") send({type: "screening"}); // "completed" in a comment is fine\nclose(4001);'
    assert {lit for lit in literals(planted) if lit in lifecycle_words()} == {"in_game", "screening", "4001"}


def test_the_generated_module_covers_what_the_page_imports():
    imported = set()
    for path in WEB.glob("*.js"):
        for names in re.findall(r"import \{([^}]*)\} from \"/client/lifecycle\.js\"", path.read_text()):
            imported |= {n.strip() for n in names.split(",")}
    assert imported and imported <= set(page_constants())
