"""Pyodide memory snapshots (`--memory-snapshot`, experimental in Pyodide): do they cut the time to a ready runtime?

Run: python -m bench.snapshot [--runs 3] [--profile typical]

The same runtime three ways, each in a dedicated module worker running client/web/python.js's `PythonHost.load` (the
page's own code), in Chromium on an emulated network (the profiles of bench/network.py; typical by default), a fresh
on-disk Chromium profile per run: a cold visit, then Chromium relaunched on the same profile for a warm one. "Ready"
is the example's package installed and imported and the game contract imported; the time runs from the worker's
creation, so all three pay the same start-up.

* plain: the page's load without a snapshot (loadPyodide, micropip, the package, the contract);
* served: the snapshot `python -m server snapshot` made once in headless Chromium after that same load, served by
  `python -m server --memory-snapshot` as a versioned file (its brotli copy), restored by python.js; warm, it comes
  from the HTTP cache;
* kept: not shipped; the cold visit loads with `_makeSnapshot: true`, then snapshots (client/web/snapshot.js) and
  keeps the file in Cache Storage (timed apart, after ready); the warm visit restores it.

A restored runtime is checked: the package and the contract are imported, and a stdlib module never imported before
still imports (the memory snapshot holds no files: the stdlib zip is installed again, the packages' files are unpacked
from the snapshot file).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright

from bench.network import PROFILES, Profile, launch
from client.harness import ROOT, served
from server.precompress import DEFAULT_CACHE_DIR, Precompressed

LOAD_TIMEOUT_MS = 300_000
MODES = ("plain", "served", "kept")
KEPT_URL = "/preflight-snapshot-experiment"  # the Cache Storage key; never requested from the server

# The experiment's worker (`ORIGIN` filled in). Message: {op, config} -> {ok, ready, bytes, check?, kept?}.
WORKER = r"""
const origin = ORIGIN;
const t0 = performance.now();
const since = () => Math.round(performance.now() - t0);
const CHECK = `
import os, sys, sysconfig, preflight_game_contract
fresh = "colorsys" not in sys.modules
import colorsys
installed = [n for n in os.listdir(sysconfig.get_paths()["purelib"]) if n.endswith(".dist-info")]
f"{fresh} {colorsys.rgb_to_hsv(1, 0, 0)} {len(installed) >= 2}"`;

self.onmessage = async ({ data: { op, config } }) => {
  try {
    const { PythonHost } = await import(origin + "/client/python.js");
    const { makeSnapshot } = await import(origin + "/client/snapshot.js");
    const host = new PythonHost(() => {});
    const load = (extra) => host.load({ ...config, ...extra }, origin, performance.timeOrigin + t0);
    const out = {};
    if (op === "plain") {
      await load({ snapshot_url: undefined });
    } else if (op === "served") {
      out.outcome = await load({});
    } else if (op === "kept-cold") {
      await load({ snapshot_url: undefined, make_snapshot: true });
      out.ready = since();
      const cache = await caches.open("preflight");
      await cache.put(origin + KEPT, new Response(makeSnapshot(host.pyodide)));
      out.kept = since() - out.ready;
    } else if (op === "kept-warm") {
      const kept = await (await caches.open("preflight")).match(origin + KEPT);
      if (!kept) throw new Error("no kept snapshot");
      out.outcome = await load({ snapshot_url: URL.createObjectURL(await kept.blob()) });
    }
    out.ready ??= since();
    if (out.outcome) out.check = `${out.outcome.snapshot} ${host.pyodide.runPython(CHECK)}`;
    out.bytes = performance.getEntriesByType("resource").reduce((sum, e) => sum + e.transferSize, 0);
    self.postMessage({ ok: true, ...out });
  } catch (err) {
    self.postMessage({ ok: false, error: String(err?.stack || err).slice(-1500) });
  }
};
""".replace("KEPT", json.dumps(KEPT_URL))
RESTORED = "restored True (0.0, 1.0, 1) True"  # micropip's and the game's wheels unpacked again

RUN = """async ([source, op, config]) => {
  const worker = new Worker(URL.createObjectURL(new Blob([source], { type: "text/javascript" })), { type: "module" });
  return await new Promise((resolve) => {
    worker.onmessage = ({ data }) => resolve(data);
    worker.onerror = (event) => resolve({ ok: false, error: event.message });
    worker.postMessage({ op, config });
  });
}"""


@dataclass
class Visit:
    mode: str
    cache: str
    ready_ms: float
    bytes: int
    kept_ms: float | None = None  # kept, cold: snapshotting and storing it, after ready


def run(page: Page, origin: str, op: str, config: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(RUN, [WORKER.replace("ORIGIN", json.dumps(origin)), op, config])
    if not result["ok"]:
        raise RuntimeError(f"{op}: {result['error']}")
    return result


def open_page(context: BrowserContext, url: str, profile: Profile) -> Page:
    page = context.pages[0] if context.pages else context.new_page()
    if profile.mbit is not None:
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.emulateNetworkConditions", profile.conditions())
    page.goto(url + "client/style.css", timeout=LOAD_TIMEOUT_MS)  # a page of the origin that loads nothing
    return page


def rendered_config(url: str) -> dict[str, Any]:
    """The runtime config the server renders into the participant's page (with the snapshot's URL)."""
    with urllib.request.urlopen(url, timeout=30) as response:
        html = response.read().decode()
    found = re.search(r'id="runtime-config">(.*?)</script>', html, re.S)
    if not found:
        raise RuntimeError("the page carries no runtime config")
    config: dict[str, Any] = json.loads(found.group(1))
    if "snapshot_url" not in config:
        raise RuntimeError("the server offers no memory snapshot (see its log)")
    return config


def pair(playwright: Playwright, url: str, config: dict[str, Any], profile: Profile, mode: str) -> list[Visit]:
    ops = {"plain": ("plain", "plain"), "served": ("served", "served"), "kept": ("kept-cold", "kept-warm")}[mode]
    visits = []
    with tempfile.TemporaryDirectory(prefix="preflight-snapshot-") as profile_dir:
        for cache, op in zip(("cold", "warm"), ops, strict=True):
            context = launch(playwright, Path(profile_dir))
            try:
                result = run(open_page(context, url, profile), url.rstrip("/"), op, config)
            finally:
                context.close()
            if "check" in result and result["check"] != RESTORED:
                raise RuntimeError(f"{op}: the restored runtime is not usable: {result['check']}")
            visits.append(Visit(mode, cache, result["ready"], result["bytes"], result.get("kept")))
    return visits


def snapshot_path(data_dir: Path) -> Path:
    """The snapshot of the built-in example's runtime: `python -m server snapshot` makes it once and names it."""
    making = [sys.executable, "-m", "server", "snapshot", "--data-dir", str(data_dir)]
    said = subprocess.run(making, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return Path(said.splitlines()[0].split(" (", 1)[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", default="typical", choices=[p for p in PROFILES if p != "local"])
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="preflight-snapshot-") as tmp:
        snapshot = snapshot_path(Path(tmp) / "making")  # the first time: a load in Chromium, then 2 min of brotli
        copies = Precompressed(DEFAULT_CACHE_DIR)
        copies.add(snapshot)
        copies.index()
        copies.build()
        brotli_size = copies.path(next(iter(copies.sources.values())), "br").stat().st_size
        with served(Path(tmp) / "data", "--memory-snapshot") as url, sync_playwright() as playwright:
            config = rendered_config(url)
            pair(playwright, url, config, PROFILES["local"], "plain")  # first-use costs, unmeasured
            visits: list[Visit] = []
            for k in range(args.runs):
                for mode in MODES if k % 2 == 0 else MODES[::-1]:
                    done = pair(playwright, url, config, profile, mode)
                    visits += done
                    print(
                        f"run {k + 1} {mode}: cold {done[0].ready_ms / 1000:.2f} s ({done[0].bytes / 1e6:.2f} MB), "
                        f"warm {done[1].ready_ms / 1000:.2f} s; load average {os.getloadavg()[0]:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
    print(f"- snapshot file: {snapshot.stat().st_size / 1e6:.1f} MB, {brotli_size / 1e6:.2f} MB as brotli")
    print(f"- profile: {profile.name} ({profile.mbit:g} Mbit/s, {profile.latency_ms:g} ms); {args.runs} runs")
    print(f"- load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    print()
    print("| way | cold: ready, s | cold: MB on the wire | warm: ready, s | cold ÷ plain | warm ÷ plain |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")

    def med(mode: str, cache: str, field: str) -> float:
        return statistics.median(getattr(v, field) for v in visits if v.mode == mode and v.cache == cache)

    for mode in MODES:
        print(
            f"| {mode} | {med(mode, 'cold', 'ready_ms') / 1000:.2f} | {med(mode, 'cold', 'bytes') / 1e6:.2f} "
            f"| {med(mode, 'warm', 'ready_ms') / 1000:.2f} "
            f"| {med(mode, 'cold', 'ready_ms') / med('plain', 'cold', 'ready_ms'):.2f} "
            f"| {med(mode, 'warm', 'ready_ms') / med('plain', 'warm', 'ready_ms'):.2f} |"
        )
    kept = [v.kept_ms for v in visits if v.kept_ms is not None]
    print(f"\nkept: snapshotting and storing it after ready took {statistics.median(kept) / 1000:.2f} s (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
