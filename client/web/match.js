// A multiplayer game in the worker (docs/multiplayer.md): the server sequences every frame, so this loop steps the
// environment only when a `frame` arrives, with the actions it names plus what the bots choose here. Every page
// does exactly the same with the same seed and frames, so every page shows the same game. It sends this page's
// human input D frames ahead, a state hash every `hash_every` frames, and its steps, as a single-player game does.
// A slot the server gives to a bot (`bots` in a frame) is played with the scene's `multiplayer.bot` from then on.

import { TYPE } from "/client/lifecycle.js";
import { choose } from "/client/partners.js";

const now = () => performance.timeOrigin + performance.now();

export class Lockstep {
  // `match`: the server's `match` message, its `frames` every frame closed before this page (re)joined.
  // `recorded`: the last frame whose steps this page already sent (before a reload), so none is sent twice.
  constructor(host, scene, match, { flush, push, send, recorded = 0 }) {
    Object.assign(this, { host, scene, match, flush, push, send, recorded });
    this.frames = new Map();  // frames received and not applied yet, by f: they may arrive twice or out of order
    this.applied = 0;         // the last frame applied
    this.ended = null;        // the server's match_end, if it came
    this.wake = null;
    this.owed = [];           // "turn" input: frames whose input waits for the next key press
    this.catchUp = 0;         // frames up to this one were closed before the page joined: drawn only at the last
    for (const frame of match.frames || []) {
      this.feed(frame);
      this.catchUp = Math.max(this.catchUp, frame.f);
    }
  }

  feed(frame) {
    if (frame.f > this.applied && !this.frames.has(frame.f)) this.frames.set(frame.f, frame);
    this.poke();
  }

  end(message) {
    this.ended = message;
    this.poke();
  }

  // A key press: "turn" input sends the oldest input it owes.
  pressed() {
    while (this.scene.input === "turn" && this.owed.length && this.host.controls?.presses.length) {
      const key = this.host.controls.presses.shift();
      this.sendInput(this.owed.shift(), this.keyAction(key));
    }
  }

  poke() {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  // The next frame in order, or null once the match has ended.
  async next() {
    while (!this.ended && !this.frames.has(this.applied + 1)) await new Promise((resolve) => (this.wake = resolve));
    if (this.ended) return null;
    const frame = this.frames.get(this.applied + 1);
    this.frames.delete(this.applied + 1);
    return frame;
  }

  keyAction(key) {
    const me = this.scene.agents[this.match.agent];
    return key !== undefined && Object.hasOwn(me.keys, key) ? me.keys[key] : me.default_action;
  }

  // This page's action for frame f from the keys now: the last key held, or the next press, else the default.
  owe(f) {
    const controls = this.host.controls;
    if (this.scene.input === "turn") {
      this.owed.push(f);
      return this.pressed();
    }
    const keys = this.scene.input === "held" ? controls.held : controls.presses.splice(0, 1);
    const key = controls.visible ? (this.scene.input === "held" ? keys[keys.length - 1] : keys[0]) : undefined;
    this.sendInput(f, this.keyAction(key));
  }

  sendInput(f, action) {
    this.send({ type: TYPE.input, f, action, match_id: this.match.match_id });
  }

  async run() {
    const { host, scene, match } = this;
    const toPy = (value) => host.pyodide.toPy(value);
    const delay = match.input_delay, me = match.agent;
    const sceneBots = Object.entries(scene.agents).filter(([, agent]) => agent.kind === "bot");
    const botPayload = {};  // slots the server gave to a bot during the match: their payload
    let team = null, episode = 0, step = 0, total = 0, steps = 0, over = false, done = false, chosen = {};
    try {
      team = host.python(() => host.contract.load_team(scene.environment, toPy(scene.env_kwargs), toPy(scene.agents)));
      host.python(() => team.reset(match.seeds[0]));
      if (!this.catchUp) host.frame(team, 0, 0, 0);
      this.send({ type: TYPE.match_ready, match_id: match.match_id });
      // The frames closed before this page joined are applied first; then inputs go out D frames ahead of them.
      let inputsSent = false;
      const startInputs = () => {
        inputsSent = true;
        for (let f = this.applied + 1; f <= this.applied + delay; f++) this.owe(f);
      };
      if (!this.catchUp) startInputs();
      for (;;) {
        const frame = await this.next();
        if (frame === null) break;
        if (over) {  // the last step ended an episode: the next one starts before this frame, with no pause
          episode += 1;
          host.python(() => team.reset(match.seeds[episode]));
          step = 0;
          over = false;
          chosen = {};
          this.host.notify({ kind: "game", type: "episode", episode, episodes: scene.episodes, score: total });
        }
        const f = frame.f, actions = { ...frame.actions }, by = {}, filled = frame.filled || [];
        for (const agentId of Object.keys(frame.actions)) by[agentId] = filled.includes(agentId) ? "filled" : "human";
        for (const agentId of frame.bots || []) {
          if (!botPayload[agentId]) {
            botPayload[agentId] = scene.multiplayer.bot;
            host.python(() => team.assign(agentId, toPy(scene.multiplayer.bot)));
          }
        }
        const bots = [...sceneBots, ...(frame.bots || []).map((agentId) => [agentId, botPayload[agentId]])];
        for (const [agentId, agent] of bots) {
          if (step % (agent.frame_skip || 1) === 0 || !(agentId in chosen)) {
            chosen[agentId] = await choose(host, team, agentId, agent);
          }
          actions[agentId] = chosen[agentId].action;
          by[agentId] = "bot";
        }
        const result = host.python(() => team.step(toPy(actions)));
        this.applied = f;
        step += 1;
        steps += 1;
        total += result.reward;
        const truncated = result.truncated || step >= scene.max_steps;
        over = result.terminated || truncated;
        const hash = f % match.hash_every === 0 ? host.python(() => team.state_hash()) : null;
        if (f > this.recorded) {
          this.push({ episode, step, frame: f, match_id: match.match_id, action: actions[me], actions, by, filled,
                      rewards: result.rewards, reward: result.reward, terminated: result.terminated, truncated,
                      info: result.info, visible: host.controls.visible, t: Math.round(now()),
                      ...(scene.record_observations ? { observation: result.observations } : {}) });
          if (hash !== null) this.send({ type: TYPE.state_hash, f, hash, match_id: match.match_id });
        }
        if (f >= this.catchUp) host.frame(team, episode, step, total);
        done = over && episode + 1 >= scene.episodes;
        if (done) break;
        if (!inputsSent && f >= this.catchUp) startInputs();
        else if (inputsSent) this.owe(f + delay);
      }
    } catch (err) {
      err.steps = steps;
      throw err;
    } finally {
      this.flush();
      team?.destroy();
    }
    return { episodes: done ? scene.episodes : episode + (over ? 1 : 0), steps, frames: this.applied,
             match_id: match.match_id, total_reward: Math.round(total * 1e6) / 1e6,
             reason: done ? "done" : "stopped", ...(this.ended && !done ? { outcome: this.ended.outcome } : {}) };
  }
}
