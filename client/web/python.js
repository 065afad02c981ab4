// Pyodide itself: the load recipe and the game environments. It runs wherever the runtime lives,
// in the dedicated worker (runtime-worker.js) or, as the last resort, on the page (runtime.js).
// `notify` receives {kind: "progress", report} as each stage starts and {kind: "core"} per loadPyodide().

import { STAGE, STATUS } from "/client/lifecycle.js";

const now = () => performance.timeOrigin + performance.now();  // comparable across the page and its workers

export class PythonHost {
  constructor(notify) {
    this.notify = notify;
    this.core = null;        // the interpreter, kept when a later stage failed so a retry does not reload it
    this.pyodide = null;     // set once everything is installed
    this.envs = new Map();
    this.nextEnv = 0;
  }

  // One operation of the message interface; its result must survive structured cloning.
  call(op, args) {
    const handler = { load: this.load, open: this.open, reset: this.reset, step: this.step, close: this.close }[op];
    if (!handler) throw new Error(`unknown runtime operation: ${op}`);
    return handler.apply(this, args);
  }

  // `startedAt` is when the page asked (ms since the epoch), so elapsed times include starting a worker.
  async load(config, origin, startedAt) {
    if (this.pyodide) return;
    const stage = (name, extra = {}) => this.notify({ kind: "progress", report: {
      status: STATUS.loading, stage: name, elapsed_ms: Math.round(now() - startedAt), ...extra } });
    stage(STAGE.runtime);
    const pyodide = this.core ??= await this.loadCore(config, origin);
    stage(STAGE.micropip);
    await pyodide.loadPackage("micropip");
    const micropip = pyodide.pyimport("micropip");
    micropip.set_index_urls(new URL(config.index_url, origin).href.replace("%7B", "{").replace("%7D", "}"));
    // The server decided where each package comes from: the Pyodide distribution's lock, or our index.
    const fromLock = config.pyodide_packages || [], fromIndex = config.packages_to_install || [];
    const total = fromLock.length + fromIndex.length;
    for (const [k, name] of fromLock.entries()) {
      stage(STAGE.packages, { package: name, done: k, total });
      const errors = [];  // loadPackage reports a failed download or install here instead of throwing
      await pyodide.loadPackage(name, { errorCallback: (text) => errors.push(text) });
      if (!(name in pyodide.loadedPackages)) {
        throw new Error(`could not load ${name}: ${errors.join(" ") || "no reason given"}`);
      }
    }
    for (const [k, name] of fromIndex.entries()) {
      stage(STAGE.packages, { package: name, done: fromLock.length + k, total });
      await micropip.install(name);
    }
    stage(STAGE.preparing, { done: total, total });
    micropip.destroy();
    pyodide.runPython("import sys");
    this.pyodide = pyodide;
  }

  async loadCore(config, origin) {
    const { loadPyodide } = await import(new URL(config.pyodide_url + "pyodide.mjs", origin).href);
    this.notify({ kind: "core" });
    const options = { indexURL: new URL(config.pyodide_url, origin).href };
    if (config.lock) {
      options.lockFileContents = config.lock;
      options.packageBaseUrl = new URL(config.wheel_base_url, origin).href;
    }
    return loadPyodide(options);
  }

  // A new environment from "module:factory"; returns its id.
  open(spec) {
    if (!this.pyodide) throw new Error("Python is not loaded");
    const [module, factory] = spec.split(":");
    const imported = this.pyodide.pyimport(module), make = imported[factory];
    try {
      this.envs.set(++this.nextEnv, make());
    } finally {
      make.destroy();
      imported.destroy();
    }
    return this.nextEnv;
  }

  reset(id) {
    return this.convert(this.env(id).reset());
  }

  // One step: the observation to draw, the reward and whether the episode is over.
  step(id, action) {
    const [observation, reward, done] = this.convert(this.env(id).step(action));
    return { observation, reward, done };
  }

  close(id) {
    this.envs.get(id)?.destroy();
    this.envs.delete(id);
  }

  env(id) {
    const env = this.envs.get(id);
    if (!env) throw new Error(`no environment ${id}`);
    return env;
  }

  convert(value) {
    if (!value?.toJs) return value;
    try {
      return value.toJs({ dict_converter: Object.fromEntries });
    } finally {
      value.destroy();
    }
  }
}
