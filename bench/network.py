"""Time to `ready` on a participant's network: today's path against the new one, three emulated networks, cold and warm.

Run: python -m bench.network [--runs 3] [--profiles local,fast,typical,slow] [--paths today,new,snapshot]

Three `python -m server` processes (the built-in example) serve the paths side by side:

* today: `--no-precompressed --micropip` and the page at `?preload=after-config`: the runtime's files as they are on
  disk (Tornado gzips text on the fly, as before), the download starting once `experiment_config` has arrived, and
  micropip installing the study's wheels from our index (the load before issue #17);
* new: pre-compressed copies (brotli for Chromium; the stdlib repacked with stored members and the start-up modules'
  bytecode, server/bytecode.py), the page's preload links
  plus its runtime started at page load, so the downloads overlap the WebSocket handshake, and the wheels the server
  resolved fetched while Python boots and unpacked without micropip;
* micropip (only with `--paths`): new, but micropip installs the wheels, as before: what installing without it saves;
* snapshot: new with `--memory-snapshot` (experimental, off by default): the runtime restored from the memory snapshot
  `python -m server snapshot` made (made here first if this runtime has none; about 2 min of brotli, once).

Networks are Chromium's own emulation (`Network.emulateNetworkConditions` over the DevTools protocol, set on the
page before it navigates): fast 100 Mbit/s and 10 ms, typical 20 Mbit/s and 40 ms, slow 5 Mbit/s and 100 ms
(latency per request, the same bandwidth down and up); `local` is no emulation (127.0.0.1), which gives this
machine's CPU floor. Emulation is set per target, so every run checks that the runtime's downloads, whichever
target made them (the page's links or the worker), never went faster than the profile allows (bytes over time).

Each run is a fresh Chromium profile on disk (a participant's cache is on disk; Playwright's throw-away contexts keep
theirs in memory and drop entries over a few MB): the cold visit, then Chromium is closed and relaunched on the same
profile for the warm visit (nothing left in memory, the HTTP and code caches kept). Per visit, on the page's clock
(ms since navigation; worker times converted through `performance.timeOrigin`):

* config: the page handles `experiment_config`; first byte: the earliest response start of a runtime file
  (`/pyodide/`, `/wheels/`), from the page's or the worker's Resource Timing; ready: the page handles the server's
  `state` with state `ready` at the start scene (Start enabled);
* bytes: the wire (`transferSize`) of every resource the page and the worker fetched, the page itself included, the
  WebSocket's frames not; runtime bytes: those under `/pyodide/` and `/wheels/`;
* the split, from the runtime's own marks (`python-load:*` in python.js): download, from the first request of a core
  file that crossed the wire to the last one's end (pyodide.mjs, pyodide.asm.mjs, pyodide.asm.wasm, python_stdlib.zip;
  none when all came from the cache); compile + bootstrap, from then (or from the runtime's start, if later) to
  `loadPyodide` resolved; packages, from there to the runtime done (the game's wheel, through micropip on today's path,
  and the game contract).

The physical limit for a profile is its cold bytes on the wire (the new path's, compressed) ÷ bandwidth + 2 round
trips (the page, then the files it names) + this machine's CPU floor: the `local` profile's ready minus its download
end, measured in the same run. A ratio of 1 is a page that costs only its bytes, two round trips and its CPU.
V8 compiles WebAssembly lazily, so most compile work happens inside bootstrap; `WebAssembly.compile` of the wasm alone
is measured once and printed with the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from client.harness import CHROMIUM, CHROMIUM_ARGS, ROOT, served
from server.precompress import DEFAULT_CACHE_DIR, Precompressed, stored_stdlib
from server.runtime import DEFAULT_PYODIDE_DIR, DEFAULT_WHEELHOUSE

LOAD_TIMEOUT_MS = 180_000  # the slow profile's cold visit of today's path moves 12 MB at 5 Mbit/s
CORE = ("pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip")
RUNTIME_PATHS = ("/pyodide/", "/stdlib/", "/wheels/", "/memory-snapshot/")


@dataclass(frozen=True)
class Profile:
    name: str
    mbit: float | None  # None: no emulation
    latency_ms: float

    @property
    def bytes_per_ms(self) -> float:
        return (self.mbit or 0) * 1e6 / 8 / 1000

    def conditions(self) -> dict[str, Any]:
        rate = (self.mbit or 0) * 1e6 / 8
        return {"offline": False, "latency": self.latency_ms, "downloadThroughput": rate, "uploadThroughput": rate}


PROFILES = {
    p.name: p
    for p in (
        Profile("local", None, 0),
        Profile("fast", 100, 10),
        Profile("typical", 20, 40),
        Profile("slow", 5, 100),
    )
}
PATHS = ("today", "new", "micropip", "snapshot")
QUERY = {"today": "&preload=after-config", "new": "", "micropip": "", "snapshot": ""}
FLAGS = {
    "today": ("--no-precompressed", "--micropip"),
    "new": (),
    "micropip": ("--micropip",),
    "snapshot": ("--memory-snapshot",),
}

# Runs before app.js: when the page handles experiment_config and the first `ready` at the start scene.
INIT_SCRIPT = """
(() => {
  const bench = window.__bench = { configAt: null, readyAt: null };
  let preflight;
  Object.defineProperty(window, "__preflight", { configurable: true, get: () => preflight, set: (obj) => {
    preflight = obj;
    let config, state;
    Object.defineProperty(obj, "config", { enumerable: true, get: () => config,
                                           set: (v) => { config = v; bench.configAt ??= performance.now(); } });
    Object.defineProperty(obj, "state", { enumerable: true, get: () => state, set: (v) => {
      state = v;
      if (v.state === "ready" && v.scene_id === "start") bench.readyAt ??= performance.now();
    } });
  } });
})();
"""

# In the page or the worker: its resources and marks on the page's clock (`origin` is the page's timeOrigin).
TIMELINE = """(origin) => {
  const shift = performance.timeOrigin - origin;
  return {
    resources: performance.getEntriesByType("resource").map((e) => ({
      url: e.name, start: e.startTime + shift, first: e.responseStart + shift, end: e.responseEnd + shift,
      bytes: e.transferSize, encoded: e.encodedBodySize })),
    marks: Object.fromEntries(performance.getEntriesByType("mark").map((m) => [m.name, m.startTime + shift])),
  };
}"""

COMPILE = """async (url) => {
  const bytes = await (await fetch(url)).arrayBuffer();
  const times = [];
  for (let k = 0; k < 5; k++) {
    const t = performance.now();
    await WebAssembly.compile(bytes);
    times.push(performance.now() - t);
  }
  return times.sort((a, b) => a - b)[2];
}"""


@dataclass
class Visit:
    profile: str
    path: str
    cache: str  # "cold" or "warm"
    config_ms: float
    first_byte_ms: float
    ready_ms: float
    bytes: int
    runtime_bytes: int
    download_ms: float
    bootstrap_ms: float
    packages_ms: float
    download_end_ms: float
    throughput_mbit: float | None  # the runtime's core downloads, bytes over time; None when from the cache


def launch(playwright: Playwright, profile_dir: Path) -> BrowserContext:
    return playwright.chromium.launch_persistent_context(
        str(profile_dir), executable_path=CHROMIUM, args=CHROMIUM_ARGS, viewport={"width": 1000, "height": 800}
    )


def visit(
    playwright: Playwright, profile_dir: Path, url: str, profile: Profile, path: str, cache: str, who: str
) -> Visit:
    context = launch(playwright, profile_dir)
    try:
        context.add_init_script(INIT_SCRIPT)
        page = context.pages[0] if context.pages else context.new_page()
        if profile.mbit is not None:
            cdp = context.new_cdp_session(page)
            cdp.send("Network.enable")
            cdp.send("Network.emulateNetworkConditions", profile.conditions())
        page.goto(f"{url}?PROLIFIC_PID={who}{QUERY[path]}", wait_until="commit")  # "load" waits for the preloads
        try:
            page.wait_for_function("window.__bench.readyAt !== null", timeout=LOAD_TIMEOUT_MS)
        except PlaywrightError as exc:
            raise RuntimeError(f"{profile.name} {path} {cache}: no ready; {pending(page)}") from exc
        runtime = page.evaluate("""(({status, where, loads, settled}) =>
            ({status, where, loads, snapshot: settled.snapshot ?? null}))(window.__preflight.runtime)""")
        restored = "restored" if path == "snapshot" else None
        if runtime != {"status": "ready", "where": "worker", "loads": 1, "snapshot": restored}:
            raise RuntimeError(f"{profile.name} {path} {cache}: the runtime is {runtime}")
        origin = page.evaluate("performance.timeOrigin")
        bench = page.evaluate("window.__bench")
        navigation = page.evaluate("performance.getEntriesByType('navigation')[0].transferSize")
        on_page = page.evaluate(TIMELINE, origin)
        [worker] = page.workers
        in_worker = worker.evaluate(TIMELINE, origin)
    finally:
        context.close()
    resources = on_page["resources"] + in_worker["resources"]
    marks = in_worker["marks"]
    runtime_entries = [r for r in resources if any(p in r["url"] for p in RUNTIME_PATHS)]
    core = [
        r
        for r in resources
        if (("/pyodide/" in r["url"] or "/stdlib/" in r["url"]) and r["url"].rsplit("/", 1)[-1] in CORE)
        or "/memory-snapshot/" in r["url"]
    ]
    fetched = [r for r in core if r["bytes"] > 0]  # over the wire; the rest came from the cache (or joined a preload)
    download_start = min((r["start"] for r in fetched), default=marks["python-load:runtime"])
    download_end = max((r["end"] for r in fetched), default=marks["python-load:runtime"])
    loaded = marks.get("python-load:core", marks["python-load:preparing"])  # loadPyodide resolved; a restore: none
    throughput = None
    if fetched and profile.mbit is not None:
        throughput = sum(r["bytes"] for r in fetched) * 8 / 1e3 / max(download_end - download_start, 1.0)
    return Visit(
        profile=profile.name,
        path=path,
        cache=cache,
        config_ms=bench["configAt"],
        first_byte_ms=min(r["first"] for r in runtime_entries),
        ready_ms=bench["readyAt"],
        bytes=navigation + sum(r["bytes"] for r in resources),
        runtime_bytes=sum(r["bytes"] for r in runtime_entries),
        download_ms=download_end - download_start,
        bootstrap_ms=loaded - max(download_end, marks["python-load:runtime"]),
        packages_ms=marks["python-load:done"] - loaded,
        download_end_ms=download_end,
        throughput_mbit=throughput,
    )


def pending(page: Page) -> str:
    """What the page and its workers had not finished fetching, for a run that never became ready."""
    try:
        origin = page.evaluate("performance.timeOrigin")
        timelines = [page.evaluate(TIMELINE, origin), *(w.evaluate(TIMELINE, origin) for w in page.workers)]
    except PlaywrightError as exc:
        return f"the page cannot say ({exc})"
    ends = [f"{r['url'].rsplit('/', 1)[-1]} ended {r['end'] / 1000:.1f} s" for t in timelines for r in t["resources"]]
    marks = [f"{name} at {at / 1000:.1f} s" for t in timelines for name, at in t["marks"].items()]
    return "; ".join([*ends, *marks]) or "nothing fetched"


def compile_ms(playwright: Playwright, url: str) -> float:
    """`WebAssembly.compile` of pyodide.asm.wasm alone, median of 5, in a page of the origin."""
    with tempfile.TemporaryDirectory(prefix="preflight-compile-") as profile_dir:
        context = launch(playwright, Path(profile_dir))
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(url + "client/style.css")
            version = DEFAULT_PYODIDE_DIR.joinpath("package.json").read_text().split('"version": "')[1].split('"')[0]
            return float(page.evaluate(COMPILE, f"{url}pyodide/{version}/pyodide.asm.wasm"))
        finally:
            context.close()


def pair(playwright: Playwright, urls: dict[str, str], profile: Profile, path: str, tag: str) -> list[Visit]:
    """A cold visit and a warm one on the same on-disk profile."""
    with tempfile.TemporaryDirectory(prefix="preflight-profile-") as profile_dir:
        return [
            visit(playwright, Path(profile_dir), urls[path], profile, path, cache, f"{tag}-{cache}")
            for cache in ("cold", "warm")
        ]


def med(visits: list[Visit], field: str) -> float:
    return statistics.median(float(getattr(v, field)) for v in visits)


def limit_ms(visits: list[Visit], profile: Profile) -> float:
    """Compressed bytes ÷ bandwidth + 2 round trips + the CPU floor (local profile: ready − download end)."""
    local = [v for v in visits if v.profile == "local" and v.path == "new" and v.cache == "cold"]
    cpu = statistics.median(v.ready_ms - v.download_end_ms for v in local)
    if profile.mbit is None:
        return med(local, "download_ms") + cpu
    cold = [v for v in visits if v.profile == profile.name and v.path == "new" and v.cache == "cold"]
    return med(cold, "bytes") / profile.bytes_per_ms + 2 * profile.latency_ms + cpu


def table(visits: list[Visit], profiles: list[Profile], paths: list[str]) -> Iterator[str]:
    yield "Medians in seconds (bytes in MB); ratio: ready ÷ the profile's physical limit."
    yield ""
    yield (
        "| profile | cache | path | config | first runtime byte | ready | ready ÷ limit | bytes | runtime bytes "
        "| download | compile + bootstrap | packages |"
    )
    yield "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for profile in profiles:
        limit = limit_ms(visits, profile)
        for cache in ("cold", "warm"):
            for path in paths:
                vs = [v for v in visits if (v.profile, v.path, v.cache) == (profile.name, path, cache)]
                yield (
                    f"| {profile.name} | {cache} | {path} | {med(vs, 'config_ms') / 1000:.2f} "
                    f"| {med(vs, 'first_byte_ms') / 1000:.2f} | **{med(vs, 'ready_ms') / 1000:.2f}** "
                    f"| {med(vs, 'ready_ms') / limit:.2f} | {med(vs, 'bytes') / 1e6:.2f} "
                    f"| {med(vs, 'runtime_bytes') / 1e6:.3f} | {med(vs, 'download_ms') / 1000:.2f} "
                    f"| {med(vs, 'bootstrap_ms') / 1000:.2f} | {med(vs, 'packages_ms') / 1000:.2f} |"
                )
    others = [p for p in paths if p not in ("today", "new")]
    yield ""
    yield (
        "| profile | physical limit, s | today ÷ new, cold | today ÷ new, warm | new ÷ limit, cold "
        + "".join(f"| today ÷ {p}, cold | today ÷ {p}, warm " for p in others)
        + "|"
    )
    yield "| --- | ---: | ---: | ---: | ---: " + "| ---: | ---: " * len(others) + "|"
    for profile in profiles:
        limit = limit_ms(visits, profile)

        def ready(path: str, cache: str, name: str = profile.name) -> float:
            return med([v for v in visits if (v.profile, v.path, v.cache) == (name, path, cache)], "ready_ms")

        yield (
            f"| {profile.name} | {limit / 1000:.2f} | **{ready('today', 'cold') / ready('new', 'cold'):.2f}** "
            f"| {ready('today', 'warm') / ready('new', 'warm'):.2f} | **{ready('new', 'cold') / limit:.2f}** "
            + "".join(
                f"| {ready('today', 'cold') / ready(p, 'cold'):.2f} | {ready('today', 'warm') / ready(p, 'warm'):.2f} "
                for p in others
            )
            + "|"
        )


def emulation_lines(visits: list[Visit], profiles: list[Profile]) -> Iterator[str]:
    """The emulation reached every target: no cold download went faster than its profile allows."""
    for profile in profiles:
        if profile.mbit is None:
            continue
        seen = [v.throughput_mbit for v in visits if v.profile == profile.name and v.throughput_mbit is not None]
        fastest = max(seen)
        verdict = "throttled" if fastest <= profile.mbit * 1.05 else "NOT THROTTLED: a target escaped the emulation"
        yield f"- {profile.name}: runtime downloads at most {fastest:.1f} Mbit/s against {profile.mbit:g} ({verdict})"


def machine_lines(compile_time: float, load: tuple[float, float]) -> Iterator[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        "unknown",
    )
    chromium = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    yield f"- {os.cpu_count()} cores ({cpu}); {chromium}, headless"
    yield f"- load average (1 min) before / after: {load[0]:.2f} / {load[1]:.2f}"
    yield f"- WebAssembly.compile of pyodide.asm.wasm alone (lazy, as V8 does it): {compile_time:.0f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="cold + warm pairs per profile and path (default: 3)")
    parser.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated (default: %(default)s)")
    parser.add_argument(
        "--paths", default="today,new,snapshot", help=f"comma-separated among {', '.join(PATHS)} (default: %(default)s)"
    )
    args = parser.parse_args()
    paths = [p for p in PATHS if p in args.paths.split(",")]
    if not {"today", "new"} <= set(paths) or not set(args.paths.split(",")) <= set(PATHS):
        parser.error(f"--paths must include today and new, among {', '.join(PATHS)}")
    names = ["local", *(n for n in args.profiles.split(",") if n != "local")]  # local gives the CPU floor
    if args.runs < 1 or not set(names) <= set(PROFILES):
        parser.error(f"--runs must be at least 1 and --profiles among {', '.join(PROFILES)}")
    profiles = [PROFILES[n] for n in names]
    if not os.access(CHROMIUM, os.X_OK):
        print(f"bench.network: {CHROMIUM} is required (`make browser` installs it)", file=sys.stderr)
        return 2
    copies = Precompressed(DEFAULT_CACHE_DIR)  # made once; the new server would otherwise send plain files at first
    for directory in (DEFAULT_PYODIDE_DIR, DEFAULT_WHEELHOUSE):
        copies.add(directory)
    if (stdlib := stored_stdlib(DEFAULT_PYODIDE_DIR, DEFAULT_CACHE_DIR)) is not None:
        copies.add(stdlib)
    copies.index()
    copies.build()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="preflight-network-") as tmp, ExitStack() as servers:
        if "snapshot" in paths:
            making = [sys.executable, "-m", "server", "snapshot", "--data-dir", str(Path(tmp) / "making")]
            subprocess.run(making, cwd=ROOT, capture_output=True, check=True)  # made once per runtime, kept after
        urls = {path: servers.enter_context(served(Path(tmp) / path, *FLAGS[path])) for path in paths}
        playwright = servers.enter_context(sync_playwright())
        for path in paths:  # the servers' and Chromium's first-use costs, unmeasured
            pair(playwright, urls, PROFILES["local"], path, f"warmup-{path}")
        visits: list[Visit] = []
        for profile in profiles:
            for k in range(args.runs):
                for path in paths if k % 2 == 0 else paths[::-1]:  # neither path always goes first
                    done = pair(playwright, urls, profile, path, f"{profile.name}-{path}-{k}")
                    visits += done
                    print(
                        f"{profile.name} {path} run {k + 1}: ready cold {done[0].ready_ms / 1000:.2f} s "
                        f"({done[0].bytes / 1e6:.2f} MB), warm {done[1].ready_ms / 1000:.2f} s "
                        f"({done[1].runtime_bytes} runtime bytes); load average {os.getloadavg()[0]:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
        compile_time = compile_ms(playwright, urls["new"])
    print("\n".join([*machine_lines(compile_time, (load_before, os.getloadavg()[0])), ""]))
    print("\n".join(table(visits, profiles, paths)))
    print("\n".join(["", *emulation_lines(visits, profiles)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
