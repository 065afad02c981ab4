// The page's Python runtime: created once, loaded as early as possible, reused by every game scene.
// It lives in a dedicated worker so the page stays responsive; the page code reads the same wherever it is.
// `report` receives each stage as a `preload` message body; the page forwards it to the server.
import { PythonHost } from "/client/python.js";
import { STATUS } from "/client/lifecycle.js";

const WORKER_URL = "/client/runtime-worker.js";
const now = () => performance.timeOrigin + performance.now();

// The runtime in a dedicated module worker; any uncaught error there ends it and fails what was pending.
class WorkerSide {
  constructor(onEvent, onDeath) {
    this.where = "worker";
    this.started = false;  // the worker's module ran; a death before that is a failure to start
    this.dead = false;
    this.pending = new Map();
    this.nextId = 0;
    this.onDeath = onDeath;
    try {
      this.worker = new Worker(WORKER_URL, { type: "module", name: "preflight-runtime" });
    } catch (err) {
      this.fail(`could not start (${err?.message || err})`);
      return;
    }
    this.worker.onmessage = ({ data }) => {
      if (data.kind === "reply") return this.settle(data);
      if (data.kind === "started") this.started = true;
      else onEvent(data);
    };
    this.worker.onerror = (event) => {
      event.preventDefault();
      this.fail(this.started ? (event.message || "crashed") : "could not start");
    };
    this.worker.onmessageerror = () => this.fail("sent a message the page could not read");
  }

  call(op, args) {
    if (this.dead) return Promise.reject(new Error(this.reason));
    return new Promise((resolve, reject) => {
      const id = ++this.nextId;
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, op, args });
    });
  }

  settle({ id, ok, value, error }) {
    const call = this.pending.get(id);
    this.pending.delete(id);
    if (ok) call?.resolve(value);
    else call?.reject(new Error(error));
  }

  fail(reason) {
    if (this.dead) return;
    this.dead = true;
    this.reason = `the Python worker stopped: ${reason}`;
    this.worker?.terminate();
    for (const call of this.pending.values()) call.reject(new Error(this.reason));
    this.pending.clear();
    this.onDeath();
  }

  close() {
    this.fail("closed with the page");
  }
}

// The runtime on the page itself: the baseline, and the last resort when no worker could run it.
class MainSide {
  constructor(onEvent) {
    this.where = "main";
    this.started = true;
    this.dead = false;
    this.host = new PythonHost(onEvent);
  }

  async call(op, args) {
    return this.host.call(op, args);
  }

  close() {}
}

export class Runtime {
  // `thread`: "worker" (the default) or "main" (the runtime on the page, for comparison).
  constructor(config, report, { thread = "worker" } = {}) {
    this.config = config;
    this.report = report;
    this.thread = thread;
    this.loads = 0;          // how many times loadPyodide() ran for this page, on whichever side
    this.workers = 0;        // how many workers were started
    this.status = null;      // null until a load starts, then one of the preload report's STATUS values
    this.settled = null;     // the last ready or error report, for the page to repeat if the server missed it
    this.side = null;        // where the runtime lives now: a WorkerSide or the MainSide
    this.loading = null;
    addEventListener("pagehide", () => this.terminate());
  }

  get where() {
    return this.side?.where ?? null;
  }

  // Start (or join) the load. A failed load is retried only when asked again, e.g. by a game scene,
  // which passes `fallback` so that a dead worker is replaced until a side loads or the page itself fails.
  load({ fallback = false } = {}) {
    if (this.status === STATUS.ready) return Promise.resolve(this);
    if (fallback && this.loading && !this.loading.fallback && this.side?.where === "worker") {
      // The server let the participant into a game while the preload still runs: it stopped waiting for it
      // (the preload timeout). The worker stuck in it is ended, which fails that load, and the game starts over.
      const stuck = this.loading;
      this.side.fail("the preload did not finish in time");
      return this._track(stuck.catch(() => {}).then(() => this._load(true)), true);
    }
    return this.loading ?? this._track(this._load(fallback), fallback);
  }

  _track(loading, fallback) {
    const tracked = loading.finally(() => { if (this.loading === tracked) this.loading = null; });
    tracked.fallback = fallback;
    this.loading = tracked;
    return tracked;
  }

  async _load(fallback) {
    for (;;) {
      const side = this._side();
      try {
        await this._attempt(side);
        return this;
      } catch (err) {
        if (!fallback || !side.dead || side.where === "main") throw err;
      }
    }
  }

  // The live side, else the next: a worker; one new worker after a crash; the page itself when a worker
  // could not start or a second one died.
  _side() {
    if (this.side && !this.side.dead) return this.side;
    const last = this.side, onEvent = (event) => this._event(event);
    if (this.thread === "worker" && this.workers < 2 && (!last || last.started)) {
      this.workers += 1;
      this.side = new WorkerSide(onEvent, () => this._died());
    } else {
      this.side = new MainSide(onEvent);
    }
    return this.side;
  }

  async _attempt(side) {
    const startedAt = now(), elapsed = () => Math.round(now() - startedAt);
    this.status = STATUS.loading;
    try {
      const outcome = await side.call("load", [this.config, location.origin, startedAt]);
      this._settle({ status: STATUS.ready, elapsed_ms: elapsed(), ...outcome });  // {snapshot} when one was offered
    } catch (err) {
      const text = String(err?.message || err).trim().split("\n").pop().slice(0, 500);
      this._settle({ status: STATUS.error, error: text, elapsed_ms: elapsed() });
      throw err;
    }
  }

  _settle(report) {
    this.status = report.status;
    this.settled = report;
    this.report(report);
  }

  _event(event) {
    if (event.kind === "core") this.loads += 1;
    else if (event.kind === "game") this.onGame?.(event);
    else if (event.kind === "progress" && this.status === STATUS.loading) this.report(event.report);
  }

  // A worker that dies while idle is replaced at the next load; one that dies while loading fails that load.
  _died() {
    if (this.status === STATUS.ready) this.status = STATUS.error;
  }

  // Play a game scene where the runtime lives; `onGame` receives its frames, step batches and episode breaks.
  async play(scene, onGame) {
    if (this.status !== STATUS.ready) throw new Error("Python is not ready");
    this.onGame = onGame;
    try {
      return await this.side.call("play", [scene]);
    } finally {
      this.onGame = null;
    }
  }

  // Keys and visibility for the game in play; nothing waits for a reply.
  input(event) {
    this.side?.call("input", [event]).catch(() => {});
  }

  // A multiplayer game's frames and its end, forwarded from the socket to the game in play (client/match.js).
  feed(frame) {
    this.side?.call("feed", [frame]).catch(() => {});
  }

  end(message) {
    this.side?.call("end", [message]).catch(() => {});
  }

  terminate() {
    this.side?.close();
  }
}
