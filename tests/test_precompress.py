"""Pre-compressed runtime files: made once, chosen by `Accept-Encoding`, the same bytes once decoded."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
import zipfile
from pathlib import Path

import brotli
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from server.app import Config
from server.examples.gridworld import study as example_study
from server.precompress import STDLIB, Precompressed, choose, main, stored_stdlib
from server.runtime import DEFAULT_PYODIDE_DIR

BROWSER = "gzip, deflate, br, zstd"  # what Chromium sends
VERSION = "9.9.9"
TEXT = b"".join(b"export function f%d(x) { return x * %d + 'pyodide'; }\n" % (k, k) for k in range(3000))
NOISE = os.urandom(64 * 1024)  # like a zip or a wheel: compression gains nothing


@pytest.mark.parametrize(
    ("header", "available", "chosen"),
    [
        (None, ("br", "gzip"), None),
        ("", ("br", "gzip"), None),
        (BROWSER, ("br", "gzip"), "br"),
        (BROWSER, ("gzip",), "gzip"),
        ("gzip", ("br", "gzip"), "gzip"),
        ("GZip, BR", ("br", "gzip"), "br"),
        ("br;q=0, gzip;q=0.5", ("br", "gzip"), "gzip"),
        ("br; q=0.0, gzip; q=0", ("br", "gzip"), None),
        ("identity", ("br", "gzip"), None),
        ("*", ("br", "gzip"), "br"),
        ("*, br;q=0", ("br", "gzip"), "gzip"),
        ("deflate, zstd", ("br", "gzip"), None),
        ("br;q=bogus, gzip", ("br", "gzip"), "gzip"),
        (BROWSER, (), None),
    ],
)
def test_the_coding_is_the_servers_first_preference_the_client_accepts(header, available, chosen):
    assert choose(header, available) == chosen


def stand_in(root: Path) -> Path:
    """A small stand-in for the Pyodide core: a compressible wasm and module, an incompressible zip, tiny files."""
    root.mkdir()
    shutil.copy(DEFAULT_PYODIDE_DIR / "pyodide-lock.json", root)
    (root / "package.json").write_text(json.dumps({"version": VERSION}))
    (root / "pyodide.mjs").write_bytes(TEXT)
    (root / "pyodide.asm.wasm").write_bytes(b"\0asm\1\0\0\0" + TEXT)
    (root / "python_stdlib.zip").write_bytes(NOISE)
    (root / "tiny.js").write_bytes(b"export const tiny = 1;\n")
    return root


@pytest.fixture
def distribution(tmp_path) -> Path:
    return stand_in(tmp_path / "pyodide")


@pytest.fixture(scope="module")
def served_files(tmp_path_factory) -> tuple[Path, Path]:
    """One stand-in and its copies for the tests that only read them: brotli at its best is slow even on a little."""
    root = tmp_path_factory.mktemp("served")
    cache = Precompressed(root / "cache")
    cache.add(stand_in(root / "pyodide"))
    cache.index()
    cache.build()
    return root / "pyodide", cache.cache_dir


def test_copies_are_made_once_and_decode_to_the_same_bytes(distribution, tmp_path):
    cache = Precompressed(tmp_path / "cache")
    cache.add(distribution)
    cache.index()
    # package.json and tiny.js are under a kilobyte: not worth a header, not indexed
    indexed = ["pyodide-lock.json", "pyodide.asm.wasm", "pyodide.mjs", "python_stdlib.zip"]
    assert sorted(Path(p).name for p in cache.sources) == indexed
    made = cache.build()
    assert sorted(made) == sorted(
        f"{name}{suffix}"
        for name in ("pyodide-lock.json", "pyodide.asm.wasm", "pyodide.mjs")
        for suffix in (".gz", ".br")
    )
    for name in ("pyodide.asm.wasm", "pyodide.mjs"):
        real = os.path.realpath(distribution / name)
        source = cache.sources[real]
        original = (distribution / name).read_bytes()
        assert gzip.decompress(cache.path(source, "gzip").read_bytes()) == original
        assert brotli.decompress(cache.path(source, "br").read_bytes()) == original
        assert cache.compressible(real)
    zipped = os.path.realpath(distribution / "python_stdlib.zip")
    assert not cache.compressible(zipped) and cache.copy(zipped, os.stat(zipped), BROWSER) is None
    assert not list(cache.cache_dir.glob("*.lock")) and not list(cache.cache_dir.glob("*.partial"))
    assert cache.build() == []  # kept: a second server, or a restart, makes nothing again

    again = Precompressed(tmp_path / "cache")
    again.add(distribution)
    again.index()
    assert again.build() == []


def test_a_file_changed_after_indexing_is_sent_as_it_is(distribution, tmp_path):
    cache = Precompressed(tmp_path / "cache")
    cache.add(distribution)
    cache.index()
    cache.build()
    path = distribution / "pyodide.mjs"
    real = os.path.realpath(path)
    assert cache.copy(real, os.stat(path), BROWSER) == ("br", cache.path(cache.sources[real], "br"))
    path.write_bytes(TEXT + b"// changed\n")
    assert cache.copy(real, os.stat(path), BROWSER) is None


def test_the_command_fills_the_cache_ahead_of_the_server(distribution, tmp_path, capsys):
    assert main([str(distribution), "--cache-dir", str(tmp_path / "made")]) == 0
    assert "6 copies made, 4 files indexed" in capsys.readouterr().out
    assert len(list((tmp_path / "made").glob("*.br"))) == 3


@pytest.fixture
def config(request, tmp_path, served_files) -> Config:
    """The example study serving the stand-in distribution, its copies made before the server starts."""
    pyodide_dir, cache_dir = served_files
    base = Config(
        example_study.experiment,
        tmp_path / "data",
        experiment_file=Path(example_study.__file__),
        pyodide_dir=pyodide_dir,
        precompressed_dir=cache_dir,
    )
    marker = request.node.get_closest_marker("config")
    return dataclasses.replace(base, **marker.kwargs) if marker else base


async def get(port: int, path: str, **headers: str) -> HTTPResponse:
    """A request as sent, nothing added (no `Accept-Encoding` unless given) and nothing decoded."""
    client = AsyncHTTPClient(force_instance=True)
    try:
        return await client.fetch(
            f"http://127.0.0.1:{port}{path}", headers=headers, decompress_response=False, raise_error=False
        )
    finally:
        client.close()


WASM = f"/pyodide/{VERSION}/pyodide.asm.wasm"
DECODE = {"br": brotli.decompress, "gzip": gzip.decompress}


@pytest.mark.gen_test
@pytest.mark.parametrize(("accept", "coding"), [(BROWSER, "br"), ("gzip", "gzip"), ("gzip, br;q=0", "gzip")])
async def test_the_wasm_is_sent_compressed_as_wasm_and_decodes_to_the_file(
    http_server, http_port, config, accept, coding
):
    response = await get(http_port, WASM, **{"Accept-Encoding": accept})
    assert response.code == 200
    assert response.headers["Content-Encoding"] == coding
    assert response.headers["Content-Type"] == "application/wasm"  # so the browser compiles it as it streams in
    assert "Accept-Encoding" in response.headers["Vary"]
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert int(response.headers["Content-Length"]) == len(response.body) < len(TEXT) / 4
    assert DECODE[coding](response.body) == (config.pyodide_dir / "pyodide.asm.wasm").read_bytes()


@pytest.mark.gen_test
@pytest.mark.parametrize("accept", [None, "identity", "deflate, zstd", "br;q=0, gzip;q=0"])
async def test_a_client_that_accepts_no_copy_gets_the_plain_file(http_server, http_port, config, accept):
    response = await get(http_port, WASM, **({"Accept-Encoding": accept} if accept is not None else {}))
    assert response.code == 200 and "Content-Encoding" not in response.headers
    assert response.headers["Content-Type"] == "application/wasm"
    assert response.body == (config.pyodide_dir / "pyodide.asm.wasm").read_bytes()
    assert "Accept-Encoding" in response.headers["Vary"]


@pytest.mark.gen_test
async def test_a_module_is_compressed_once_not_again_by_tornado(http_server, http_port, config):
    response = await get(http_port, f"/pyodide/{VERSION}/pyodide.mjs", **{"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip" and response.headers["Content-Type"] == "text/javascript"
    assert response.headers["Vary"] == "Accept-Encoding"
    assert gzip.decompress(response.body) == TEXT


@pytest.mark.gen_test
async def test_each_coding_has_its_own_etag_and_revalidates(http_server, http_port):
    tags = {}
    for accept, coding in ((BROWSER, "br"), ("gzip", "gzip"), ("identity", None)):
        response = await get(http_port, WASM, **{"Accept-Encoding": accept})
        assert response.headers.get("Content-Encoding") == coding
        tags[coding] = response.headers["Etag"]
    assert len(set(tags.values())) == 3
    again = await get(http_port, WASM, **{"Accept-Encoding": BROWSER, "If-None-Match": tags["br"]})
    assert again.code == 304
    other = await get(http_port, WASM, **{"Accept-Encoding": "gzip", "If-None-Match": tags["br"]})
    assert other.code == 200 and other.headers["Content-Encoding"] == "gzip"


@pytest.mark.gen_test
async def test_a_range_request_gets_the_file_as_it_is(http_server, http_port, config):
    response = await get(http_port, WASM, **{"Accept-Encoding": BROWSER, "Range": "bytes=0-99"})
    assert response.code == 206 and "Content-Encoding" not in response.headers
    assert response.body == (config.pyodide_dir / "pyodide.asm.wasm").read_bytes()[:100]


@pytest.mark.gen_test
async def test_head_describes_the_copy_get_would_send(http_server, http_port):
    client = AsyncHTTPClient(force_instance=True)
    try:
        head = await client.fetch(
            f"http://127.0.0.1:{http_port}{WASM}",
            method="HEAD",
            headers={"Accept-Encoding": BROWSER},
            decompress_response=False,
        )
    finally:
        client.close()
    body = await get(http_port, WASM, **{"Accept-Encoding": BROWSER})
    assert head.headers["Content-Encoding"] == "br"
    assert head.headers["Content-Length"] == body.headers["Content-Length"] == str(len(body.body))


@pytest.mark.gen_test
@pytest.mark.parametrize("path", [f"/pyodide/{VERSION}/python_stdlib.zip", "/wheels/micropip-0.11.1-py3-none-any.whl"])
async def test_zips_and_wheels_are_sent_as_they_are(http_server, http_port, config, path):
    response = await get(http_port, path, **{"Accept-Encoding": BROWSER})
    assert response.code == 200 and "Content-Encoding" not in response.headers
    on_disk = (
        (config.pyodide_dir / "python_stdlib.zip") if "stdlib" in path else (config.wheelhouse / path.split("/")[-1])
    )
    assert response.body == on_disk.read_bytes()


@pytest.mark.gen_test
@pytest.mark.config(precompressed_dir=None)
async def test_without_precompression_everything_is_sent_as_it_is(http_server, http_port, config):
    response = await get(http_port, WASM, **{"Accept-Encoding": BROWSER})
    assert response.code == 200 and "Content-Encoding" not in response.headers
    assert response.body == (config.pyodide_dir / "pyodide.asm.wasm").read_bytes()


def test_the_stdlib_is_repacked_once_with_the_same_members_stored(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-node"))  # the stored zip alone; tests/test_bytecode.py adds the rest
    made = stored_stdlib(DEFAULT_PYODIDE_DIR, tmp_path)
    assert made is not None and made.parent.parent == tmp_path / "stdlib"
    with zipfile.ZipFile(DEFAULT_PYODIDE_DIR / STDLIB) as original, zipfile.ZipFile(made) as stored:
        assert [i.filename for i in stored.infolist()] == [i.filename for i in original.infolist()]
        assert {i.compress_type for i in stored.infolist()} == {zipfile.ZIP_STORED}
        assert all(stored.read(name) == original.read(name) for name in original.namelist())
    before = made.stat().st_mtime_ns
    assert stored_stdlib(DEFAULT_PYODIDE_DIR, tmp_path) == made and made.stat().st_mtime_ns == before  # kept
    (tmp_path / "blocked").write_text("")  # a cache that cannot be written: the distribution's own is used
    assert stored_stdlib(DEFAULT_PYODIDE_DIR, tmp_path / "blocked") is None
