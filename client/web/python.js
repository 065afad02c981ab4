// Pyodide itself: the load recipe and the game environments. It runs wherever the runtime lives,
// in the dedicated worker (runtime-worker.js) or, as the last resort, on the page (runtime.js).
// `notify(event, transfer)` receives {kind: "progress", report} as each stage starts, {kind: "core"} per
// loadPyodide(), and {kind: "game", ...} while a game plays (frames, batches of steps, episode breaks).
// The game loop runs here, next to Python, so a busy page never slows its ticks.

import { STAGE, STATUS } from "/client/lifecycle.js";
import { Lockstep } from "/client/match.js";
import { loadModels, playTeam } from "/client/partners.js";

const now = () => performance.timeOrigin + performance.now();  // comparable across the page and its workers
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
const EPISODE_PAUSE_MS = 1500;  // "Episode k of n" between episodes
const BATCH_STEPS = 64, BATCH_MS = 250;  // steps leave for the server in batches, at least four times a second

// Where loadPyodide finds the core, and the lock the server wrote for the wheels it serves.
function coreOptions(config, origin) {
  const options = { indexURL: new URL(config.pyodide_url, origin).href };
  if (config.stdlib_url) options.stdLibURL = new URL(config.stdlib_url, origin).href;  // repacked to compress better
  if (config.lock) {
    options.lockFileContents = config.lock;
    options.packageBaseUrl = new URL(config.wheel_base_url, origin).href;
  }
  return options;
}

// One wheel the server listed, checked against its SHA-256 (where the page may compute one: a secure context).
async function fetchWheel({ url, sha256 }, origin) {
  const response = await fetch(new URL(url, origin));
  if (!response.ok) throw new Error(`${url} could not be fetched (HTTP ${response.status})`);
  const bytes = await response.arrayBuffer();
  if (crypto.subtle) {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    const hex = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
    if (hex !== sha256) throw new Error(`${url} is not the file the server listed (SHA-256 ${hex})`);
  }
  return bytes;
}

export class PythonHost {
  constructor(notify) {
    this.notify = notify;
    this.core = null;        // the interpreter, kept when a later stage failed so a retry does not reload it
    this.pyodide = null;     // set once everything is installed
    this.contract = null;    // server/game_contract.py, imported once Python is loaded
    this.controls = null;    // the keys, presses and visibility of the game in play
    this.models = new Map(); // AI partners' ONNX sessions by the path the study names, preloaded with Python
    this.snapshot = null;    // with a memory snapshot offered: "restored", or why it was "not used: ..."
    this.lockstep = null;    // the multiplayer game in play (client/match.js): frames and the match's end go to it
  }

  // One operation of the message interface; its result must survive structured cloning.
  call(op, args) {
    const handler = { load: this.load, play: this.play, input: this.input, feed: this.feed, end: this.end }[op];
    if (!handler) throw new Error(`unknown runtime operation: ${op}`);
    return handler.apply(this, args);
  }

  // `startedAt` is when the page asked (ms since the epoch), so elapsed times include starting a worker.
  // Resolves with {snapshot} when the server offered a memory snapshot (see restore).
  async load(config, origin, startedAt) {
    if (this.pyodide) return this.outcome();
    const stage = (name, extra = {}) => {
      performance.mark(`python-load:${name}`);  // the stages on the runtime's own timeline, for DevTools and benches
      this.notify({ kind: "progress", report: {
        status: STATUS.loading, stage: name, elapsed_ms: Math.round(now() - startedAt), ...extra } });
    };
    stage(STAGE.runtime);
    if (config.snapshot_url && !this.core && await this.restore(config, origin)) {
      stage(STAGE.preparing);
      performance.mark("python-load:done");
      return this.outcome();
    }
    // The exact wheels the server resolved start downloading now, while Python boots; without a list (a runtime
    // hosted elsewhere), micropip resolves and installs from our index as before.
    const wheels = config.wheels ? config.wheels.map((wheel) => fetchWheel(wheel, origin)) : null;
    const contract = fetch(new URL("/client/game_contract.py", origin));
    [contract, ...wheels || []].forEach((download) => download.catch(() => {}));  // awaited below, failures too
    const pyodide = this.core ??= await this.loadCore(config, origin);
    performance.mark("python-load:core");
    let micropip = null;
    if (!wheels) {
      stage(STAGE.micropip);
      await pyodide.loadPackage("micropip");
      micropip = pyodide.pyimport("micropip");
      micropip.set_index_urls(new URL(config.index_url, origin).href.replace("%7B", "{").replace("%7D", "}"));
    }
    // The server decided where each package comes from: the Pyodide distribution's lock, or our index.
    const fromLock = config.pyodide_packages || [];
    const fromIndex = wheels ? config.wheels.map((wheel) => wheel.name) : config.packages_to_install || [];
    const total = fromLock.length + fromIndex.length;
    for (const [k, name] of fromLock.entries()) {
      stage(STAGE.packages, { package: name, done: k, total });
      const errors = [];  // loadPackage reports a failed download or install here instead of throwing
      await pyodide.loadPackage(name, { errorCallback: (text) => errors.push(text) });
      if (!(name in pyodide.loadedPackages)) {
        throw new Error(`could not load ${name}: ${errors.join(" ") || "no reason given"}`);
      }
    }
    const sitePackages = wheels?.length ? pyodide.runPython("import site; site.getsitepackages()[0]") : null;
    for (const [k, name] of fromIndex.entries()) {
      stage(STAGE.packages, { package: name, done: fromLock.length + k, total });
      if (wheels) pyodide.unpackArchive(await wheels[k], "wheel", { extractDir: sitePackages });
      else await micropip.install(name);
    }
    if (wheels?.length) pyodide.runPython("import importlib; importlib.invalidate_caches()");
    if (config.models?.length) {
      this.models = await loadModels(config, origin, (done, count) => stage(STAGE.models, { done, total: count }));
    }
    stage(STAGE.preparing, { done: total, total });
    micropip?.destroy();
    const source = await contract;
    if (!source.ok) throw new Error(`the game contract could not be fetched (HTTP ${source.status})`);
    pyodide.FS.writeFile(`${pyodide.FS.cwd()}/preflight_game_contract.py`, await source.text());
    this.contract = pyodide.pyimport("preflight_game_contract");
    this.pyodide = pyodide;
    performance.mark("python-load:done");
    return this.outcome();
  }

  outcome() {
    return this.snapshot ? { snapshot: this.snapshot } : {};
  }

  async loadCore(config, origin) {
    const { loadPyodide } = await import(new URL(config.pyodide_url + "pyodide.mjs", origin).href);
    this.notify({ kind: "core" });
    // `make_snapshot` is set only by server/snapshot_maker.py, which snapshots the runtime this load ends with.
    return loadPyodide({ ...coreOptions(config, origin), ...(config.make_snapshot ? { _makeSnapshot: true } : {}) });
  }

  // The memory snapshot of what this load ends with (server/snapshot_maker.py made it): the whole load replaced
  // by one download. Any failure leaves the plain load to run, and says why in the ready report.
  async restore(config, origin) {
    const [{ loadPyodide }, { restoreSnapshot }] = await Promise.all([
      import(new URL(config.pyodide_url + "pyodide.mjs", origin).href), import("/client/snapshot.js")]);
    this.notify({ kind: "core" });
    const { pyodide, note } = await restoreSnapshot(loadPyodide, coreOptions(config, origin),
                                                    new URL(config.snapshot_url, origin).href);
    this.snapshot = note;
    if (!pyodide) return false;
    try {
      this.contract = pyodide.pyimport("preflight_game_contract");
    } catch (err) {
      this.snapshot = `not used: ${String(err?.message || err).trim().split("\n").pop().slice(0, 200)}`;
      return false;
    }
    this.core = this.pyodide = pyodide;
    return true;
  }

  // Play a game scene to its end: every episode, each step at the scene's rate (or on each key for "turn").
  // Resolves with the summary the page reports in `game_over`; a broken environment rejects with a plain message.
  async play(scene) {
    if (!this.pyodide) throw new Error("Python is not loaded");
    const controls = this.controls = { held: [], presses: [], visible: true, wake: null };
    const started = now(), deadline = scene.time_limit_s ? started + 1000 * scene.time_limit_s : Infinity;
    const period = 1000 / scene.fps;
    let game = null, total = 0, steps = 0, episodes = 0, reason = "done", batch = [], flushedAt = now();
    const flush = () => {
      if (batch.length) this.notify({ kind: "game", type: "steps", steps: batch });
      batch = [];
      flushedAt = now();
    };
    if (scene.agents) {
      const push = (step) => {
        batch.push(step);
        if (batch.length >= BATCH_STEPS || now() - flushedAt >= BATCH_MS) flush();
      };
      if (scene.match) {  // set before the first await, so a frame the page forwards next finds it
        const send = (message) => this.notify({ kind: "game", type: "send", message });
        const lockstep = this.lockstep = new Lockstep(this, scene, scene.match,
                                                      { flush, push, send, recorded: scene.match.recorded });
        try {
          return await lockstep.run();
        } finally {
          this.lockstep = null;
          this.controls = null;
        }
      }
      try {
        return await playTeam(this, scene, { period, deadline, controls, flush, push });
      } finally {
        this.controls = null;
      }
    }
    try {
      game = this.python(() => this.contract.load.callKwargs(scene.environment, this.pyodide.toPy(scene.env_kwargs),
                                                              { assets: this.pyodide.toPy(scene.assets || []) }));
      for (let episode = 0; episode < scene.episodes && reason === "done"; episode++) {
        if (episode > 0) await this.episodeBreak(flush, episode, scene.episodes, total);
        this.python(() => game.reset(scene.seeds[episode]));
        this.frame(game, episode, 0, total);
        let step = 0, over = false, next = now();
        while (!over) {
          let action = scene.default_action, keys = [];
          if (scene.input === "turn") {
            if (!controls.presses.length) flush();  // the steps so far leave now, not at the next key, however late
            const key = await this.nextPress(deadline);
            if (key === null) { reason = "time_limit"; break; }
            action = scene.keys[key];
            keys = [key];
          } else {
            next += period;
            await sleep(next - now());
            while (scene.pause_when_hidden && !controls.visible && now() < deadline) {
              await this.wait(deadline);
              next = now();
            }
            if (now() >= deadline) { reason = "time_limit"; break; }
            keys = scene.input === "held" ? controls.held.slice() : controls.presses.splice(0, 1);
            const key = scene.input === "held" ? keys[keys.length - 1] : keys[0];
            if (key !== undefined && controls.visible) action = scene.keys[key];
          }
          const began = now();
          const result = this.python(() => game.step(this.pyodide.toPy(action)));
          step += 1;
          steps += 1;
          total += result.reward;
          const truncated = result.truncated || step >= scene.max_steps;
          over = result.terminated || truncated;
          batch.push({ episode, step, action, reward: result.reward, terminated: result.terminated, truncated,
                       info: result.info, keys, visible: controls.visible, t: Math.round(now()),
                       ...(scene.record_observations ? { observation: result.observation } : {}) });
          this.frame(game, episode, step, total, began);
          if (batch.length >= BATCH_STEPS || now() - flushedAt >= BATCH_MS) flush();
        }
        episodes = episode + 1;
      }
    } catch (err) {
      err.steps = steps;
      throw err;
    } finally {
      flush();
      game?.destroy();
      this.controls = null;
    }
    return { episodes, steps, total_reward: Math.round(total * 1e6) / 1e6, reason };
  }

  // "Episode k of n" on the page, with the steps so far sent first.
  async episodeBreak(flush, episode, episodes, score) {
    flush();
    this.notify({ kind: "game", type: "episode", episode, episodes, score });
    await sleep(EPISODE_PAUSE_MS);
  }

  sleep(ms) {
    return sleep(ms);
  }

  // The page's keys and visibility: {held: [keys, oldest first]}, {press: key} or {visible: bool}.
  input(event) {
    const controls = this.controls;
    if (!controls) return;
    if (event.held) controls.held = event.held;
    if (event.press) controls.presses.push(event.press);
    if (event.visible !== undefined) controls.visible = event.visible;
    controls.wake?.();
    if (event.press) this.lockstep?.pressed();
  }

  // A multiplayer frame the server closed, forwarded by the page; the lockstep applies frames in order, once.
  feed(frame) {
    this.lockstep?.feed(frame);
  }

  // The server ended the match (match_end): the lockstep stops after the frame it is applying.
  end(message) {
    this.lockstep?.end(message);
  }

  async nextPress(deadline) {
    while (!this.controls.presses.length) {
      if (now() >= deadline) return null;
      await this.wait(deadline);
    }
    return this.controls.presses.shift();
  }

  // Until the next input, or the deadline.
  wait(deadline) {
    return new Promise((resolve) => {
      const timer = deadline === Infinity ? null : setTimeout(resolve, Math.max(0, deadline - now()));
      this.controls.wake = () => { clearTimeout(timer); this.controls.wake = null; resolve(); };
    });
  }

  // Render, and hand the frame to the page: a drawing as it is, an RGB image as a transferred buffer.
  // `work_ms`: the step and the render, in this thread, for the benchmark of the loop.
  frame(game, episode, step, score, began = now()) {
    const frame = this.python(() => game.frame());
    const transfer = frame.kind === "rgb" ? [(frame.data = frame.data.slice().buffer)] : [];
    this.notify({ kind: "game", type: "frame", episode, step, score, frame, work_ms: now() - began }, transfer);
  }

  // Call into Python and convert the result; a Python error becomes its last line (the contract's own words).
  python(call) {
    let value;
    try {
      value = call();
    } catch (err) {
      const lines = String(err?.message || err).trim().split("\n");
      throw new Error(lines[lines.length - 1].replace(/^(preflight_game_contract\.)?ContractError: /, ""));
    }
    return this.convert(value);
  }

  convert(value) {
    if (!value?.toJs || value.type === "Game" || value.type === "Team") return value;
    try {
      return value.toJs({ dict_converter: Object.fromEntries });
    } finally {
      value.destroy();
    }
  }
}
