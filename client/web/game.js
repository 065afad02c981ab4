// A game scene: the environment runs in Python (the preloaded runtime, in its worker), the page draws and reads keys.
// `step_ms` in each game_event is the round trip page -> runtime -> page.

const KEYS = { ArrowUp: 0, ArrowRight: 1, ArrowDown: 2, ArrowLeft: 3 };

export async function playGame(runtime, scene, canvas, send) {
  const env = await runtime.environment(scene.environment);
  const draw = (obs) => {
    const ctx = canvas.getContext("2d"), cell = canvas.width / obs.width;
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = "#556"; for (const [x, y] of obs.walls) ctx.fillRect(x * cell, y * cell, cell, cell);
    ctx.fillStyle = "#2a9d4b"; ctx.fillRect(obs.goal[0] * cell, obs.goal[1] * cell, cell, cell);
    ctx.fillStyle = "#2456d6"; ctx.fillRect(obs.agent[0] * cell + 4, obs.agent[1] * cell + 4, cell - 8, cell - 8);
  };
  let score = 0, steps = 0, keys = null;
  try {
    for (let episode = 0; episode < scene.episodes; episode++) {
      let obs = await env.reset(), done = false;
      draw(obs);
      window.__preflight.firstFrameAt ??= performance.now();
      keys ??= keyQueue();
      for (steps = 0; !done && steps < scene.max_steps;) {
        const action = await keys.next();
        const t0 = performance.now();
        const result = await env.step(action);  // a round trip to wherever the runtime lives
        const stepMs = performance.now() - t0;
        window.__preflight.firstStepAt ??= performance.now();
        obs = result.observation; done = result.done; score += result.reward; steps += 1;
        draw(obs);
        window.__preflight.game_events = (window.__preflight.game_events || 0) + 1;
        send({ type: "game_event", episode, step: steps, action, reward: result.reward,
               step_ms: Math.round(stepMs * 1000) / 1000 });
      }
    }
  } finally {
    keys?.stop();
    await env.close().catch(() => {});
  }
  send({ type: "game_over", steps, score: Math.round(score * 1000) / 1000 });
}

// Arrow keys in the order pressed: keys that arrive while a step is on its way to the runtime are kept
// (up to a few, so a held key cannot pile up moves), not lost.
function keyQueue(limit = 16) {
  const queued = [], waiting = [];
  const onKey = (event) => {
    if (!(event.key in KEYS)) return;
    event.preventDefault();
    if (waiting.length) waiting.shift()(KEYS[event.key]);
    else if (queued.length < limit) queued.push(KEYS[event.key]);
  };
  window.addEventListener("keydown", onKey);
  return {
    next: () => (queued.length ? Promise.resolve(queued.shift()) : new Promise((resolve) => waiting.push(resolve))),
    stop: () => window.removeEventListener("keydown", onKey),
  };
}
