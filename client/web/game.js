// A game scene: the environment runs in Python (the preloaded runtime), the page draws and reads keys.

const KEYS = { ArrowUp: 0, ArrowRight: 1, ArrowDown: 2, ArrowLeft: 3 };

export async function playGame(pyodide, scene, canvas, send) {
  const [module, factory] = scene.environment.split(":");
  const env = pyodide.pyimport(module)[factory]();
  const toJs = (value) => (value && value.toJs ? value.toJs({ dict_converter: Object.fromEntries }) : value);
  const draw = (obs) => {
    const ctx = canvas.getContext("2d"), cell = canvas.width / obs.width;
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = "#556"; for (const [x, y] of obs.walls) ctx.fillRect(x * cell, y * cell, cell, cell);
    ctx.fillStyle = "#2a9d4b"; ctx.fillRect(obs.goal[0] * cell, obs.goal[1] * cell, cell, cell);
    ctx.fillStyle = "#2456d6"; ctx.fillRect(obs.agent[0] * cell + 4, obs.agent[1] * cell + 4, cell - 8, cell - 8);
  };
  let score = 0, steps = 0;
  for (let episode = 0; episode < scene.episodes; episode++) {
    let obs = toJs(env.reset()), done = false;
    draw(obs);
    window.__preflight.firstFrameAt ??= performance.now();
    for (steps = 0; !done && steps < scene.max_steps;) {
      const action = await nextAction();
      const t0 = performance.now();
      const result = env.step(action);
      const [nextObs, reward, finished] = toJs(result);
      result.destroy();
      const stepMs = performance.now() - t0;
      window.__preflight.firstStepAt ??= performance.now();
      obs = nextObs; done = finished; score += reward; steps += 1;
      draw(obs);
      send({ type: "game_event", episode, step: steps, action, reward, step_ms: Math.round(stepMs * 1000) / 1000 });
    }
  }
  env.destroy && env.destroy();
  send({ type: "game_over", steps, score: Math.round(score * 1000) / 1000 });
}

function nextAction() {
  return new Promise((resolve) => {
    const onKey = (event) => {
      if (!(event.key in KEYS)) return;
      event.preventDefault();
      window.removeEventListener("keydown", onKey);
      resolve(KEYS[event.key]);
    };
    window.addEventListener("keydown", onKey);
  });
}
