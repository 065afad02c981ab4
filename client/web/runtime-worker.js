// The dedicated worker the page's Python runtime lives in, so loading and stepping never block the page.
// Page -> worker: {id, op, args}. Worker -> page: {kind: "started"} once, {kind: "progress", report} and
// {kind: "core"} and {kind: "game", ...} as they happen, {kind: "reply", id, ok, value | error} for each request.
import { PythonHost } from "./python.js";

const host = new PythonHost((event, transfer = []) => self.postMessage(event, transfer));

self.onmessage = async ({ data: { id, op, args } }) => {
  try {
    self.postMessage({ kind: "reply", id, ok: true, value: await host.call(op, args) });
  } catch (err) {
    self.postMessage({ kind: "reply", id, ok: false, error: String(err?.message || err).slice(-4000) });
  }
};

self.postMessage({ kind: "started" });
