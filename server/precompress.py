"""Pre-compressed copies of the runtime's files, made once and chosen per request by `Accept-Encoding`.

Brotli at its best setting takes about 35 s for `pyodide.asm.wasm` (9.6 MB → 2.7 MB) on a small machine: far
too slow for a request, and too slow to hold up start-up. So each file is compressed once, by content hash, into a
cache directory (`build/precompressed/` by default, `make` fills it): the server indexes the files it serves at
start-up, compresses what the cache lacks in a background thread, and sends a file as it is until its copies exist.

`python_stdlib.zip` is a zip of deflated members, which brotli cannot shrink further (2.55 MB either way); the same
members *stored* make a 9.7 MB zip that brotli packs to 1.6 MB. So the cache also holds that repacked stdlib
(`stored_stdlib`, 0.15 s), served under its own URL and named to Pyodide with `stdLibURL`.

`python -m server.precompress [--cache-dir DIR] [DIR ...]` fills the cache ahead of time (the Makefile does).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import logging
import mimetypes
import os
import sys
import threading
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import brotli

from . import bytecode
from .locations import PYODIDE_DIR, WHEELHOUSE
from .static import StaticFiles

log = logging.getLogger("preflight")

DEFAULT_CACHE_DIR = Path(__file__).resolve().parent.parent / "build" / "precompressed"
SUFFIXES = {"br": ".br", "gzip": ".gz"}
"""The codings made for each file, in the order the server prefers them."""
BUILD_ORDER = ("gzip", "br")
"""gzip takes a second for everything, brotli most of a minute: the quick copies are there first."""
MIN_SIZE = 1024
"""Smaller files gain less than an HTTP header's worth."""
MIN_SAVING = 0.05
"""A copy must be at least this much smaller than the file: zips and wheels (2–5% smaller) are sent as they are."""
NOT_WORTH_IT = ".none"
"""The cache's marker for a file that compresses too little to keep a copy of."""


STDLIB = "python_stdlib.zip"
STDLIB_DIR = "stdlib"
"""The repacked stdlib is kept in the cache at `stdlib/<the original's digest>/python_stdlib.zip`..."""
STDLIB_URL = "/stdlib/"
"""... and served at `/stdlib/<digest>/python_stdlib.zip`, immutable."""


def stored_stdlib(pyodide_dir: Path, cache_dir: Path) -> Path | None:
    """The stdlib the page loads, made once in the cache (None if it cannot be: the page then loads the
    distribution's own): the distribution's `python_stdlib.zip` with every member stored, and with the bytecode of
    the modules imported at start-up beside their sources when Node can compile it (`server/bytecode.py`)."""
    source = pyodide_dir / STDLIB
    try:
        data = source.read_bytes()
        digest = hashlib.sha256(data).hexdigest()[:16]
        stored = cache_dir / STDLIB_DIR / digest / STDLIB
        if not stored.is_file():
            stored.parent.mkdir(parents=True, exist_ok=True)
            partial = stored.with_name(f"{STDLIB}.{os.getpid()}.partial")
            with zipfile.ZipFile(source) as original, zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as repacked:
                for info in original.infolist():
                    member = zipfile.ZipInfo(info.filename, info.date_time)
                    member.external_attr = info.external_attr
                    repacked.writestr(member, original.read(info))
            os.replace(partial, stored)
    except (OSError, zipfile.BadZipFile) as exc:
        log.warning("the stdlib is sent as the distribution has it: %s", exc)
        return None
    return with_bytecode(pyodide_dir, stored, cache_dir / STDLIB_DIR / f"{digest}-{bytecode.RECIPE}") or stored


def with_bytecode(pyodide_dir: Path, stored: Path, directory: Path) -> Path | None:
    """The stored stdlib with start-up bytecode, made now if it is not yet; None (and why, once) if it cannot be."""
    target, failed = directory / STDLIB, directory / "failed"
    if target.is_file():
        return target
    if failed.is_file():
        return None
    started = time.monotonic()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        count = bytecode.compile_startup(pyodide_dir, stored, target)
    except (OSError, bytecode.BytecodeError) as exc:
        log.warning("the stdlib is sent without start-up bytecode (the page compiles it, about 1 s more): %s", exc)
        if not isinstance(exc, bytecode.NotNow):
            with contextlib.suppress(OSError):
                failed.write_text(f"{exc}\n")
        return None
    log.info("start-up bytecode for %d stdlib modules made in %.1f s", count, time.monotonic() - started)
    return target


def weights(header: str) -> dict[str, float]:
    """Each content coding an `Accept-Encoding` header names, lower-cased, with its q-value (1 when not given)."""
    found = {}
    for item in header.split(","):
        name, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if name:
            found[name.lower()] = q
    return found


def choose(header: str | None, available: Iterable[str]) -> str | None:
    """The coding to send: the server's first preference among those the cache has and the client accepts (q > 0)."""
    if not header:
        return None
    accepts = weights(header)
    have = set(available)
    for name in SUFFIXES:
        if name in have and accepts.get(name, accepts.get("*", 0.0)) > 0:
            return name
    return None


@dataclass(frozen=True)
class Source:
    """A served file as it was when indexed: a copy is used only while the file is still this one."""

    digest: str
    size: int
    mtime_ns: int

    def matches(self, stat: os.stat_result) -> bool:
        return stat.st_size == self.size and stat.st_mtime_ns == self.mtime_ns


class Precompressed:
    """The cache of compressed copies for the files under some directories, and which copy answers a request."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self.paths: list[Path] = []  # files and directories
        self.sources: dict[str, Source] = {}  # by the real path of the served file
        self.thread: threading.Thread | None = None

    def add(self, path: Path) -> None:
        """Serve copies for this file, or every file under this directory; `index` or `build` reads them."""
        self.paths.append(path)

    def files(self) -> Iterator[Path]:
        for top in self.paths:
            for path in sorted(top.rglob("*")) if top.is_dir() else [top]:
                if path.is_file() and not path.name.startswith(".") and path.stat().st_size >= MIN_SIZE:
                    yield path

    def index(self) -> None:
        """Hash every file once, so requests find their copies from the first one (about 40 ms for the npm core)."""
        for path in self.files():
            stat = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            self.sources[os.path.realpath(path)] = Source(digest, stat.st_size, stat.st_mtime_ns)

    def build(self) -> list[str]:
        """Make every missing copy, quick ones first; returns what was made. Several processes may run it at once."""
        made: list[str] = []
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        for coding in BUILD_ORDER:
            for real, source in sorted(self.sources.items()):
                if self._make(Path(real), source, coding):
                    made.append(f"{Path(real).name}{SUFFIXES[coding]}")
        return made

    def start(self) -> None:
        """Index now, and make the missing copies in a background thread while the server already serves."""
        self.index()
        self.thread = threading.Thread(target=self._build_logged, name="precompress", daemon=True)
        self.thread.start()

    def _build_logged(self) -> None:
        started = time.monotonic()
        try:
            made = self.build()
        except OSError as exc:
            log.warning("runtime files are sent uncompressed: %s", exc)
            return
        if made:
            log.info(
                "compressed %d runtime files into %s in %.1f s", len(made), self.cache_dir, time.monotonic() - started
            )

    def path(self, source: Source, coding: str) -> Path:
        return self.cache_dir / f"{source.digest}{SUFFIXES[coding]}"

    def skipped(self, source: Source, coding: str | None = None) -> Path:
        """The marker of a copy not worth keeping; without a coding, of a file gzip could not shrink (none is made)."""
        return self.cache_dir / f"{source.digest}{SUFFIXES[coding] if coding else ''}{NOT_WORTH_IT}"

    def _settled(self, source: Source, coding: str) -> bool:
        return any(p.exists() for p in (self.path(source, coding), self.skipped(source), self.skipped(source, coding)))

    def _make(self, real: Path, source: Source, coding: str) -> bool:
        target = self.path(source, coding)
        if self._settled(source, coding):
            return False
        lock_path = self.cache_dir / f"{source.digest}{SUFFIXES[coding]}.lock"
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another server, or `make`, may be making the same copy
            if self._settled(source, coding):
                return False
            data = real.read_bytes()
            if hashlib.sha256(data).hexdigest() != source.digest:
                return False  # changed since it was indexed: it is sent as it is
            packed = gzip.compress(data, 9, mtime=0) if coding == "gzip" else brotli.compress(data, quality=11)
            if len(packed) > (1 - MIN_SAVING) * len(data):
                self.skipped(source, None if coding == "gzip" else coding).touch()
            else:
                partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
                partial.write_bytes(packed)
                os.replace(partial, target)
            lock_path.unlink()  # whoever waits on it finds the work done
        return target.exists()

    def copy(self, real: str, stat: os.stat_result, accept_encoding: str | None) -> tuple[str, Path] | None:
        """The coding and the copy to send for this file and this request's `Accept-Encoding`, if any."""
        source = self.sources.get(real)
        if source is None or not source.matches(stat):
            return None
        coding = choose(accept_encoding, (c for c in SUFFIXES if self.path(source, c).exists()))
        return None if coding is None else (coding, self.path(source, coding))

    def compressible(self, real: str) -> bool:
        """Whether the response for this file can depend on `Accept-Encoding`."""
        source = self.sources.get(real)
        return source is not None and not self.skipped(source).exists()


def content_type(path: str) -> str:
    """The type of the file as named, whatever its coding: `application/wasm` lets a browser compile as it downloads."""
    if path.endswith(".wasm"):
        return "application/wasm"
    if path.endswith((".mjs", ".js")):
        return "text/javascript"
    mime, coding = mimetypes.guess_type(path)
    if coding == "gzip":
        return "application/gzip"
    return "application/octet-stream" if coding is not None or mime is None else mime


class EncodedFiles(StaticFiles):
    """Static files sent as their pre-compressed copy when the request accepts one, and as they are otherwise.

    The copy keeps the file's type, so `pyodide.asm.wasm` stays `application/wasm` for streaming compilation; a
    `Range` request gets the file as it is; each coding has its own ETag and the response varies on `Accept-Encoding`.
    """

    def initialize(  # type: ignore[override]
        self, path: str, precompressed: Precompressed | None = None, default_filename: str | None = None
    ) -> None:
        super().initialize(path, default_filename)
        self.precompressed = precompressed
        self.source_path: str | None = None
        self.coding: str | None = None
        self.copy_size = 0

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        path = super().validate_absolute_path(root, absolute_path)
        self.source_path = path
        if path is None or self.precompressed is None:
            return path
        real = os.path.realpath(path)
        if self.precompressed.compressible(real) and not self._vary_added_by_app():
            self.set_header("Vary", "Accept-Encoding")
        if "Range" in self.request.headers:
            return path
        found = self.precompressed.copy(real, os.stat(path), self.request.headers.get("Accept-Encoding"))
        if found is None:
            return path
        coding, copy = found
        try:
            self.copy_size = copy.stat().st_size
        except FileNotFoundError:
            return path
        self.coding = coding
        self.set_header("Content-Encoding", coding)
        return str(copy)

    def _vary_added_by_app(self) -> bool:
        """Tornado's own gzip transform adds `Vary: Accept-Encoding` to every response when it is on."""
        return bool(self.settings.get("compress_response") or self.settings.get("gzip"))

    def get_content_size(self) -> int:
        return self.copy_size if self.coding else super().get_content_size()

    def compute_etag(self) -> str | None:
        etag = super().compute_etag()
        return f'{etag[:-1]}-{self.coding}"' if etag and self.coding else etag

    def get_content_type(self) -> str:
        return content_type(self.source_path or self.absolute_path or "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server.precompress",
        description="Make the compressed copies of the runtime's files the server sends (once; they are kept).",
    )
    defaults = [d for d in (PYODIDE_DIR, WHEELHOUSE) if d is not None]
    parser.add_argument("directories", nargs="*", type=Path, default=defaults)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = parser.parse_args(argv)
    cache = Precompressed(args.cache_dir)
    started = time.monotonic()
    for directory in args.directories:
        cache.add(directory)
        if (directory / STDLIB).is_file() and (stdlib := stored_stdlib(directory, args.cache_dir)) is not None:
            cache.add(stdlib)
    cache.index()
    made = cache.build()
    print(f"{len(made)} copies made, {len(cache.sources)} files indexed, in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
