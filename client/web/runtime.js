// The page's Python runtime: loaded once, as early as possible, and reused by every game scene.
// `report` receives each stage as a `preload` message body; the page forwards it to the server.


export class Runtime {
  constructor(config, report) {
    this.config = config;
    this.report = report;
    this.loads = 0;          // how many times loadPyodide() ran on this page
    this.status = "idle";    // idle | loading | ready | error
    this.pyodide = null;     // set once everything is installed
    this.core = null;        // the loaded interpreter, kept if a later step failed
    this.loading = null;
  }

  // Start (or join) the load. A failed load is retried only when asked again, e.g. by a game scene.
  load() {
    if (this.status === "ready") return Promise.resolve(this.pyodide);
    if (this.status === "loading") return this.loading;
    this.loading = this._load();
    return this.loading;
  }

  async _loadCore() {
    const cfg = this.config, origin = location.origin;
    const { loadPyodide } = await import(new URL(cfg.pyodide_url + "pyodide.mjs", origin).href);
    this.loads += 1;
    const options = { indexURL: new URL(cfg.pyodide_url, origin).href };
    if (cfg.lock) {
      options.lockFileContents = cfg.lock;
      options.packageBaseUrl = new URL(cfg.wheel_base_url, origin).href;
    }
    return loadPyodide(options);
  }

  async _load() {
    const cfg = this.config, origin = location.origin, started = performance.now();
    this.status = "loading";
    const stage = (name, extra = {}) => this.report({ status: "loading", stage: name,
      elapsed_ms: Math.round(performance.now() - started), ...extra });
    try {
      stage("runtime");
      const pyodide = this.core ??= await this._loadCore();
      stage("micropip");
      await pyodide.loadPackage("micropip");
      const micropip = pyodide.pyimport("micropip");
      micropip.set_index_urls(new URL(cfg.index_url, origin).href.replace("%7B", "{").replace("%7D", "}"));
      const packages = cfg.packages_to_install || [];
      for (const [k, name] of packages.entries()) {
        stage("packages", { package: name, done: k, total: packages.length });
        await micropip.install(name);
      }
      stage("preparing", { done: packages.length, total: packages.length });
      pyodide.runPython("import sys");
      this.pyodide = pyodide;
      this.status = "ready";
      this.report({ status: "ready", elapsed_ms: Math.round(performance.now() - started) });
      return pyodide;
    } catch (err) {
      this.status = "error";
      const text = String(err && err.message || err).trim().split("\n").pop().slice(0, 500);
      this.report({ status: "error", error: text, elapsed_ms: Math.round(performance.now() - started) });
      throw err;
    }
  }
}
