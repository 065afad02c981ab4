// The participant's page: a view of the session the server drives.
// It reports facts and preload progress; the server decides screening, gating and the next scene.
// What it must know of the lifecycle and the protocol it imports from /client/lifecycle.js, which the server
// generates from its table: this file holds no state, region, outcome, code or stage name of its own.
import { encode, decode } from "/vendor/msgpack/index.mjs";
import { Runtime } from "/client/runtime.js";
import { playGame } from "/client/game.js";
import { CLOSE, CODE, FINAL_STATES, GIVE_UP, PARTNER, PLAYING, STAGE, STAGES, STATUS, TYPE, WAITING } from "/client/lifecycle.js";

const $ = (id) => document.getElementById(id);

const preflight = (window.__preflight = { states: [], errors: [], runtime: null, firstFrameAt: null, firstStepAt: null,
                                          connections: 0, games: 0, steps: 0, frameTimes: [],
                                          match: null, hashes: [], partners: [], matchEnd: null });
const params = Object.fromEntries(new URLSearchParams(location.search));
// The page is going away (a reload, a closed tab): its worker is ended with it, which fails the preload or the game
// in play. Neither is over then (the reloaded page loads Python again and plays the game again; the server keeps a
// match for the player's return), so nothing is reported. Registered before the runtime's own pagehide listener,
// so it is set before that failure is seen.
let leaving = false;
addEventListener("pagehide", () => (leaving = true));
const TOKEN_KEY = `preflight.token:${location.pathname}${location.search}`;

let socket = null, lastSeq = 0, ackTimer = null, retries = 0, screeningSent = false;
let runtime = null, scene = null, progressTimer = null, loadingText = "";
const played = new Set();  // scene instances whose game this page started: each plays once, however often told
// Steps this tab sent of each single-player game, kept over a reload: a game the reload ended is played again from
// its start, and its game_over counts every step sent for it and says it was restarted.
const GAMES_KEY = `preflight.games:${location.pathname}${location.search}`;
let gamesSent = (() => {
  try { return JSON.parse(sessionStorage.getItem(GAMES_KEY)) || {}; } catch { return {}; }
})();
const keepGames = () => {
  try { sessionStorage.setItem(GAMES_KEY, JSON.stringify(gamesSent)); } catch { /* full: a restart counts less */ }
};
let gameInPlay = false, gameFailed = false;
// Said once on the page after it started afresh because the session had ended while the participant was away.
const NOTICE_KEY = `preflight.notice:${location.pathname}${location.search}`;
// Multiplayer (docs/multiplayer.md): the match this page plays, from the server's `match`. Its frames wait here
// until the worker has the game, then go straight to it. What this tab already reported of a match (the last frame
// whose steps left, whether game_over did) is kept in sessionStorage, so a reload's replay sends nothing twice.
const MATCH_KEY = `preflight.match:${location.pathname}${location.search}`;
let match = null, matchArrived = null, waitingTimer = null, partnerTimer = null;
const matchMemory = (matchId) => {
  try {
    const kept = JSON.parse(sessionStorage.getItem(MATCH_KEY));
    return kept?.match_id === matchId ? kept : { match_id: matchId, frame: 0, over: false };
  } catch {
    return { match_id: matchId, frame: 0, over: false };
  }
};
const keepMatch = (memory) => {
  try { sessionStorage.setItem(MATCH_KEY, JSON.stringify(memory)); } catch { /* full: a reload may resend */ }
};
// `?runtime=main` keeps Python on the page's own thread (the baseline the worker is measured against).
const newRuntime = (config = preflight.config.pyodide_config) => new Runtime(config, reportPreload,
                                     { thread: params.runtime === "main" ? "main" : "worker" });
// Preload reports made before there is a session wait for it; a settled one is said once per connection.
const earlyReports = [];
let settledSentOn = null;
// Research data is numbered (`n`) and kept, in this tab's sessionStorage so a reload keeps it too, until the
// server's `received` says it is stored; what is not confirmed is sent again after every hello. The server drops
// what it already has, and records as a gap any number it never gets (the oldest are dropped past the bound).
const PENDING_KEY = `preflight.pending:${location.pathname}${location.search}`;
const RESEARCH = new Set([TYPE.steps, TYPE.game_event, TYPE.game_over, TYPE.preload]);
const MAX_PENDING = 10_000;
const freshPending = () => ({ n: 0, items: [] });
let pending = (() => {
  try { return JSON.parse(sessionStorage.getItem(PENDING_KEY)) || freshPending(); } catch { return freshPending(); }
})();
const keepPending = () => {
  try { sessionStorage.setItem(PENDING_KEY, JSON.stringify(pending)); } catch { /* full: kept in memory only */ }
};
const send = (message) => {
  if (RESEARCH.has(message.type)) {
    message = { ...message, n: ++pending.n };
    pending.items.push(message);
    if (pending.items.length > MAX_PENDING) pending.items.shift();
    keepPending();
  }
  if (socket?.readyState === WebSocket.OPEN) socket.send(encode(message));
};
function onReceived(message) {
  pending.items = pending.items.filter((item) => item.n > message.n);
  keepPending();
}
preflight.pending = () => pending.items.length;
preflight.send = send;
Object.defineProperty(preflight, "socket", { get: () => socket });

// One connection at a time; a dropped one comes back with the session token (kept for this tab only, so a
// reload resumes the session and a new tab from the link does not), and the server resends what was missed.
function connect() {
  socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  socket.binaryType = "arraybuffer";
  screeningSent = false;
  socket.onopen = () => {
    preflight.connections += 1;
    retries = 0;
    const token = sessionStorage.getItem(TOKEN_KEY);
    send(token ? { type: TYPE.hello, resume_token: token, last_seq: lastSeq } : { type: TYPE.hello, params });
    if (token) notice("");
    if (token) for (const message of pending.items) socket.send(encode(message));
  };
  socket.onclose = onClose;
  socket.onmessage = (event) => {
    const message = decode(new Uint8Array(event.data));
    if (message.seq) {
      lastSeq = Math.max(lastSeq, message.seq);
      ackTimer ??= setTimeout(() => { ackTimer = null; send({ type: TYPE.ack, seq: lastSeq }); }, 200);
    }
    ({ experiment_config: onConfig, activate_scene: onScene, state: onState, error: onError, received: onReceived,
       [TYPE.match]: onMatch, [TYPE.frame]: onFrame, [TYPE.partner_status]: onPartner, [TYPE.match_end]: onMatchEnd })[
      message.type]?.(message);
  };
}

function onClose(event) {
  if (FINAL_STATES.includes(preflight.state?.state)) return;  // over: nothing to come back to
  if (event.code === CLOSE.TAKEN_OVER) return notice("This study continues in another tab or window; please use that one.");
  if (GIVE_UP.includes(event.code) || retries >= 8) {
    return notice(`Connection closed (${event.code}${event.reason ? ": " + event.reason : ""}). Please reload the page.`);
  }
  notice("Connection lost. Reconnecting…");
  setTimeout(connect, Math.min(500 * 2 ** retries++, 15_000));
}

// The server rendered the runtime into the page (its preload links are already downloading): Python starts
// loading now, while the socket opens. Without it (`?preload=after-config`) it starts on experiment_config.
const rendered = document.getElementById("runtime-config");
if (rendered) {
  runtime = preflight.runtime = newRuntime(JSON.parse(rendered.textContent));
  runtime.load().catch(() => {});
}

connect();
if (sessionStorage.getItem(NOTICE_KEY)) {
  notice(sessionStorage.getItem(NOTICE_KEY));
  sessionStorage.removeItem(NOTICE_KEY);
}

function onConfig(config) {
  preflight.config = config;
  if (sessionStorage.getItem(TOKEN_KEY) !== config.session_token) {  // a new session numbers its data afresh
    pending = freshPending();
    keepPending();
    gamesSent = {};
    keepGames();
  }
  sessionStorage.setItem(TOKEN_KEY, config.session_token);
  for (const report of earlyReports.splice(0)) sendPreload(report);
  if (config.pyodide_config.needs_pyodide && !runtime) {
    runtime = preflight.runtime = newRuntime();
    runtime.load().catch(() => {});  // an error is reported and shown; the game retries the load itself
  }
}

function screeningFacts() {
  return {
    user_agent: navigator.userAgent, screen_width: screen.width, screen_height: screen.height,
    device_pixel_ratio: window.devicePixelRatio, webassembly: typeof WebAssembly === "object",
    touch: "ontouchstart" in window, max_touch_points: navigator.maxTouchPoints || 0,
    hardware_concurrency: navigator.hardwareConcurrency || 0, language: navigator.language || "",
    platform: navigator.platform || "",
  };
}

function reportPreload(report) {
  if (leaving) return;  // the load this page's end stopped: the next page loads again
  if (preflight.config) sendPreload(report);
  else if (earlyReports.length < 100) earlyReports.push(report);
  showProgress(report);
}

// The server stopped waiting for the preload (its timeout) and let the participant on while Python still loads.
const SLOW = ": taking longer than expected. You can continue; the game loads Python again when it starts.";
const slowNote = () => (preflight.state?.may_advance && runtime?.status === STATUS.loading ? SLOW : "");

function sendPreload(report) {
  send({ type: TYPE.preload, ...report });
  if (report.status !== STATUS.loading) settledSentOn = preflight.connections;
}

function showProgress(report) {
  const box = $("progress");
  box.hidden = FINAL_STATES.includes(preflight.state?.state);  // over (a reload on the end page): nothing to load for
  box.classList.toggle("problem", report.status === STATUS.error);
  clearInterval(progressTimer);
  const since = performance.now() - (report.elapsed_ms || 0);
  const tick = () => ($("progress-time").textContent = `(${((performance.now() - since) / 1000).toFixed(1)} s)`);
  if (report.status === STATUS.loading) {
    const { share, label } = STAGES[report.stage] || { share: 0, label: "Loading" };
    const k = report.total ? report.done / report.total : 0;
    $("progress-fill").style.width = `${Math.round(100 * (share + (report.stage === STAGE.packages ? 0.3 * k : 0)))}%`;
    loadingText = report.stage === STAGE.packages
      ? `${label} (${report.done + 1} of ${report.total}: ${report.package})` : label;
    $("progress-text").textContent = loadingText + slowNote();
    tick();
    progressTimer = setInterval(tick, 100);
  } else if (report.status === STATUS.ready) {
    $("progress-fill").style.width = "100%";
    $("progress-text").textContent = "Python is ready";
    $("progress-time").textContent = `(${(report.elapsed_ms / 1000).toFixed(1)} s)`;
  } else {
    $("progress-text").textContent = "Python could not be prepared in advance. You can still continue: the game will try again when it starts.";
    $("progress-time").textContent = "";
  }
}

function onScene(message) {
  if (gameFailed) notice("");  // the failed game's message stays with its scene, not on the next one
  gameFailed = false;
  scene = message;
  $("title").textContent = message.title || "";
  $("content").innerHTML = message.html || "";
  $("game").hidden = message.scene_type !== "game";
  $("advance").hidden = message.scene_type === "end";
  $("advance").textContent = message.scene_type === "start" ? "Start" : "Continue";
  if (message.scene_type !== "start") $("progress").hidden = message.scene_type !== "game" || runtime?.status === STATUS.ready;
  if (message.scene_type === "end") showEnd(message);
}

function showEnd(message) {
  const end = document.createElement("p");
  if (message.completion_code) {
    end.innerHTML = 'Your completion code: <span class="code" id="completion-code"></span>';
    end.querySelector("#completion-code").textContent = message.completion_code;
  }
  $("content").append(end);
  if (message.redirect_url) {
    const link = document.createElement("a");
    link.href = message.redirect_url;
    link.textContent = "Return to the study platform";
    $("content").append(link);
  }
}

function onState(message) {
  preflight.states.push(message);
  preflight.state = message;
  const awaiting = message.awaiting || [];
  if (awaiting.includes(TYPE.screening) && !screeningSent) {
    screeningSent = true;
    send({ type: TYPE.screening, facts: screeningFacts() });
  }
  // The server missed how the preload ended (a report lost in a dropped connection): say it again.
  if (awaiting.includes(TYPE.preload) && runtime?.settled && settledSentOn !== preflight.connections) {
    sendPreload(runtime.settled);
  }
  $("advance").disabled = !message.may_advance;
  if (runtime?.status === STATUS.loading && loadingText) $("progress-text").textContent = loadingText + slowNote();
  if (FINAL_STATES.includes(message.state)) {  // completed or excluded: no button, no loading to show
    $("advance").hidden = $("progress").hidden = true;
    clearInterval(progressTimer);
  }
  $("hint").textContent = message.may_advance ? "" : waitingText(message);
  showWaitingRoom(message.waiting);
  const instance = `${scene?.scene_id}@${scene?.index}`;
  if (message.state === PLAYING && scene?.scene_type === "game" && !played.has(instance)) {
    played.add(instance);
    startGame(scene);
  }
}

// The waiting room: who is here and the time left, counted down here from the server's numbers only for show;
// the server alone decides when the wait ends (a match, or its timeout) and says so with a new state.
function showWaitingRoom(waiting) {
  clearInterval(waitingTimer);
  waitingTimer = null;
  if (!waiting) return;
  const since = performance.now(), left0 = waiting.deadline_s;  // seconds left when the server said so
  const tick = () => {
    const left = Math.max(0, Math.ceil(left0 - (performance.now() - since) / 1000));
    const clock = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
    $("hint").textContent =
      `Waiting for a partner… ${waiting.waiting} of ${waiting.needed} players here; ${clock} left.`;
  };
  tick();
  waitingTimer = setInterval(tick, 1000);
}

// The server matched this page: once per match, however often the message comes (it comes again after a reload,
// with every frame closed so far, from which the worker rebuilds the game).
function onMatch(message) {
  if (match?.message.match_id === message.match_id) {
    for (const frame of message.frames || []) onFrame(frame);
    return;
  }
  match = { message, frames: [...(message.frames || [])], playing: false, ended: null };
  preflight.match = { match_id: message.match_id, agent: message.agent, replayed: (message.frames || []).length };
  showWaitingRoom(null);
  matchArrived?.();
}

function onFrame(frame) {
  if (!match || match.ended) return;
  if (match.playing) runtime?.feed(frame);
  else match.frames.push(frame);
}

function onPartner(message) {
  preflight.partners.push(message);
  clearInterval(partnerTimer);
  partnerTimer = null;
  const box = $("partner");
  box.hidden = false;
  if (message.status === PARTNER.reconnecting) {  // the server's deadline, counted down here only for show
    const since = performance.now();
    const tick = () => {
      const left = Math.max(0, Math.ceil((message.deadline_s ?? 0) - (performance.now() - since) / 1000));
      box.textContent = `Your partner lost their connection; waiting up to ${left} s for them to come back.`;
    };
    tick();
    partnerTimer = setInterval(tick, 1000);
  } else {
    box.textContent = PARTNER_TEXT[message.status] ?? "";
    box.hidden = !box.textContent;
  }
}

const PARTNER_TEXT = {
  [PARTNER.connected]: "Your partner is back.",
  [PARTNER.bot]: "Your partner did not come back; the computer plays for them now.",
  [PARTNER.left]: "Your partner has left the game.",
};

function onMatchEnd(message) {
  if (!match || match.message.match_id !== message.match_id) return;
  clearInterval(partnerTimer);
  match.ended = preflight.matchEnd = message;
  if (match.playing) runtime?.end(message);
  $("partner").hidden = false;
  $("partner").textContent = "The game has ended.";
}

// The text for the state, else for the first preflight region that has one (screening before preloading).
function waitingText(message) {
  return WAITING[message.state] ?? Object.values(message.regions || {}).map((leaf) => WAITING[leaf]).find(Boolean) ?? "";
}

// The game runs to its end, then the page reports a summary the server checks against the steps it received.
// A game that cannot run ends as failed with a plain message: the participant is never stuck in it.
async function startGame(gameScene) {
  preflight.games += 1;
  gameInPlay = true;
  $("advance").disabled = true;
  const before = preflight.steps;
  const instance = `${gameScene.scene_id}@${gameScene.index}`;
  const earlier = gameScene.multiplayer ? undefined : gamesSent[instance];  // sent before a reload ended it
  const restart = earlier === undefined ? {} : { restarted: true };
  if (!gameScene.multiplayer) {
    gamesSent[instance] = earlier ?? 0;
    keepGames();
  }
  const sendGame = (message) => {
    send(message);
    if (message.type === TYPE.steps) {
      gamesSent[instance] += message.steps.length;
      keepGames();
    }
  };
  const status = (text) => ($("hint").textContent = text);
  try {
    status(runtime?.status === STATUS.ready ? "" : "Preparing the game…");
    // Back in a game after a reload, it starts while this page's own load still runs: join that load rather than
    // have the game restart it (which is for a preload the server stopped waiting for).
    const back = gameScene.multiplayer || earlier !== undefined;
    if (back && runtime?.loading && !runtime.loading.fallback) await runtime.load().catch(() => {});
    const python = await gameRuntime();
    $("progress").hidden = true;
    status("");
    if (gameScene.multiplayer) return await playMatch(python, gameScene, status);
    const summary = await playGame(python, gameScene, $("game"), { send: sendGame, status });
    send({ type: TYPE.game_over, ...summary, steps: (earlier ?? 0) + summary.steps, ...restart });
  } catch (err) {
    if (leaving) return;
    const text = String(err?.message || err).trim().split("\n").pop().slice(0, 500);
    notice(`The game could not run: ${text}`);
    gameFailed = true;
    send({ type: TYPE.game_over, failed: true, error: text, steps: (earlier ?? 0) + preflight.steps - before,
           ...restart });
  } finally {
    gameInPlay = false;
  }
}

// A multiplayer game: wait for the server's match, then play it with this page's agent's keys. A reload replays the
// match from its frames; what this tab already sent (steps, game_over) is not sent again.
async function playMatch(python, gameScene, status) {
  while (!match || match.used) {  // a match is played by one scene; a later scene waits for its own
    status("Waiting for the game to start…");
    await new Promise((resolve) => (matchArrived = resolve));
    status("");
  }
  match.used = true;
  const { message } = match, memory = matchMemory(message.match_id);
  $("partner").hidden = false;
  $("partner").textContent = `You play ${message.agent}.`;
  if (memory.over) return status("Waiting for the other players to finish…");
  const me = gameScene.agents[message.agent];
  const matchScene = { ...gameScene, keys: me.keys, default_action: me.default_action,
                       match: { ...message, frames: match.frames, recorded: memory.frame } };
  const sendMatch = (outgoing) => {
    send(outgoing);
    if (outgoing.type === TYPE.state_hash) preflight.hashes.push([outgoing.f, outgoing.hash]);
    if (outgoing.type === TYPE.steps) {
      memory.frame = Math.max(memory.frame, ...outgoing.steps.map((step) => step.frame ?? 0));
      keepMatch(memory);
    }
  };
  const started = () => {
    match.playing = true;
    match.frames = [];
    if (match.ended) runtime.end(match.ended);
  };
  const summary = await playGame(python, matchScene, $("game"), { send: sendMatch, status, started });
  send({ type: TYPE.game_over, ...summary });
  keepMatch({ ...memory, over: true });
  if (!match.ended) status("Waiting for the other players to finish…");
}

// The preloaded runtime when there is one; only a failed preload (or one the server stopped waiting for)
// makes the game load Python itself: in the same worker, a new one, or on the page when no worker can run it.
function gameRuntime() {
  runtime ??= preflight.runtime = newRuntime();
  return runtime.load({ fallback: true });
}

function onError(message) {
  preflight.errors.push(message);
  if (message.code === CODE.BAD_TOKEN) {  // the session ended while away: start afresh as the link says
    sessionStorage.removeItem(TOKEN_KEY);
    const text = "Your earlier session ended while you were away, so the study starts again.";
    if (gameInPlay) {  // its game still runs, with that session's seeds: a fresh page ends it and loads anew
      sessionStorage.setItem(NOTICE_KEY, text);
      return location.reload();
    }
    played.clear();
    lastSeq = 0;
    notice(text);
    return send({ type: TYPE.hello, params });
  }
  if (message.code === CODE.ALREADY_PARTICIPATED) {
    return notice("You have already taken part in this study (or it is open in another window), so it cannot start again here.");
  }
  // A multiplayer input the server refused as closed or ahead is a race the lockstep already absorbs.
  const quiet = [CODE.GATED, CODE.NOT_ALLOWED, CODE.FRAME_CLOSED, CODE.FRAME_AHEAD];
  if (!quiet.includes(message.code)) {
    notice(`The server refused a message (${message.code}): ${message.message}`);
  }
}

function notice(text) {
  $("notice").hidden = !text;
  $("notice").textContent = text;
}

$("advance").addEventListener("click", () => {
  $("advance").disabled = true;
  send({ type: TYPE.advance });
});
