// AI partners, in the worker beside Python: ONNX models preloaded with onnxruntime-web (single-threaded WebAssembly,
// served by our server), and the loop of a multi-agent game, where every bot chooses before the step it acts in.
// Python and random policies choose in Python (server/game_contract.py `Team`); an ONNX policy's scores come
// from its session here and are turned into an action in Python, with the agent's seeded rng.

const now = () => performance.timeOrigin + performance.now();

// Fetch every model the study names and create its inference session; `progress(done, total, path)` per model.
export async function loadModels(config, origin, progress) {
  const models = new Map();
  const list = config.models || [];
  if (!list.length) return models;
  progress(0, list.length, list[0].path);  // onnxruntime's module and WebAssembly load within this stage
  const ort = await import(new URL(config.onnxruntime_url + "ort.wasm.min.mjs", origin).href);
  ort.env.wasm.numThreads = 1;  // threads need cross-origin isolation, which the page does not ask for
  ort.env.wasm.wasmPaths = new URL(config.onnxruntime_url, origin).href;
  for (const [k, model] of list.entries()) {
    if (k > 0) progress(k, list.length, model.path);
    const response = await fetch(new URL(model.url, origin));
    if (!response.ok) throw new Error(`the model ${model.path} could not be fetched (HTTP ${response.status})`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    let session;
    try {
      session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
    } catch (err) {
      throw new Error(`the model ${model.path} could not be loaded: ${String(err?.message || err).split("\n")[0]}`);
    }
    models.set(model.path, { ...model, session, Tensor: ort.Tensor, output: session.outputNames[0] });
  }
  return models;
}

// One bot's choice for the current observation: {action, probs}; a failure names the agent.
export async function choose(host, team, agentId, agent) {
  const policy = agent.policy;
  try {
    if (policy.kind !== "onnx") return { action: host.python(() => team.act(agentId)), probs: null };
    const model = host.models.get(policy.path);
    if (!model) throw new Error(`its model ${policy.path} was not preloaded`);
    const features = host.python(() => team.features(agentId));
    if (model.input_size !== null && features.length !== model.input_size) {
      throw new Error(`its observation has ${features.length} numbers; ${policy.path} takes ${model.input_size}`);
    }
    const input = new model.Tensor("float32", Float32Array.from(features), [1, features.length]);
    const output = await model.session.run({ [model.input_name]: input });
    const scores = Array.from(output[model.output].data);
    return host.python(() => team.choose(agentId, host.pyodide.toPy(scores)));
  } catch (err) {
    throw new Error(`the AI partner (${agentId}) failed: ${String(err?.message || err).split("\n").pop()}`);
  }
}

// The multi-agent version of PythonHost.play: the same ticks, inputs, episodes, batches and frames; each step
// records every agent's action and who chose it ("human", "bot" or "default"), and the time the bots took.
export async function playTeam(host, scene, { period, deadline, controls, flush, push }) {
  const agents = Object.entries(scene.agents);
  const human = agents.find(([, agent]) => agent.kind === "human")?.[0] ?? null;
  const bots = agents.filter(([, agent]) => agent.kind === "bot");
  let team = null, total = 0, steps = 0, episodes = 0, reason = "done", botMax = 0, slow = 0;
  try {
    const toPy = (value) => host.pyodide.toPy(value);
    team = host.python(() => host.contract.load_team(scene.environment, toPy(scene.env_kwargs), toPy(scene.agents)));
    for (let episode = 0; episode < scene.episodes && reason === "done"; episode++) {
      if (episode > 0) await host.episodeBreak(flush, episode, scene.episodes, total);
      host.python(() => team.reset(scene.seeds[episode]));
      host.frame(team, episode, 0, total);
      let step = 0, over = false, next = now();
      const chosen = {};
      while (!over) {
        let action = scene.default_action, keys = [], pressed = false;
        if (scene.input === "turn") {
          if (!controls.presses.length) flush();  // the steps so far leave now, not at the next key, however late
          const key = await host.nextPress(deadline);
          if (key === null) { reason = "time_limit"; break; }
          action = scene.keys[key];
          keys = [key];
          pressed = true;
        } else {
          next += period;
          await host.sleep(next - now());
          while (scene.pause_when_hidden && !controls.visible && now() < deadline) {
            await host.wait(deadline);
            next = now();
          }
          if (now() >= deadline) { reason = "time_limit"; break; }
          keys = scene.input === "held" ? controls.held.slice() : controls.presses.splice(0, 1);
          const key = scene.input === "held" ? keys[keys.length - 1] : keys[0];
          if (key !== undefined && controls.visible) { action = scene.keys[key]; pressed = true; }
        }
        const actions = {}, by = {}, probs = {};
        if (human !== null) { actions[human] = action; by[human] = pressed ? "human" : "default"; }
        const started = now();
        for (const [agentId, agent] of bots) {
          if (step % agent.frame_skip === 0) chosen[agentId] = await choose(host, team, agentId, agent);
          actions[agentId] = chosen[agentId].action;
          by[agentId] = "bot";
          if (agent.record_policy && chosen[agentId].probs) probs[agentId] = chosen[agentId].probs;
        }
        const botMs = now() - started;
        botMax = Math.max(botMax, botMs);
        if (botMs > period) slow += 1;  // the bots alone took longer than a tick: the game ran slower than its fps
        const result = host.python(() => team.step(toPy(actions)));
        step += 1;
        steps += 1;
        total += result.reward;
        const truncated = result.truncated || step >= scene.max_steps;
        over = result.terminated || truncated;
        push({ episode, step, action, actions, by, rewards: result.rewards, reward: result.reward,
               terminated: result.terminated, truncated, info: result.info, keys, visible: controls.visible,
               t: Math.round(now()), bot_ms: Math.round(botMs * 1000) / 1000,
               ...(Object.keys(probs).length ? { probs } : {}),
               ...(scene.record_observations ? { observation: result.observations } : {}) });
        host.frame(team, episode, step, total);
      }
      episodes = episode + 1;
    }
  } catch (err) {
    err.steps = steps;
    throw err;
  } finally {
    flush();
    team?.destroy();
  }
  return { episodes, steps, total_reward: Math.round(total * 1e6) / 1e6, reason,
           bot_ms_max: Math.round(botMax * 1000) / 1000, slow_bot_ticks: slow };
}
