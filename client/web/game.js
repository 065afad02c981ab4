// A game scene on the page: keys and visibility go to the runtime, frames come back and are drawn, batches of
// steps go to the server. The environment and its loop run with Python (in the worker), so this stays light.
import { TYPE } from "/client/lifecycle.js";

// `started` is called as soon as the runtime has the game, so a multiplayer page forwards frames only from then on.
export async function playGame(runtime, scene, canvas, { send, status, started }) {
  const stats = window.__preflight;
  const assets = await loadAssets(scene);
  const controls = keyControls(scene, (event) => runtime.input(event));
  const onVisibility = () => runtime.input({ visible: document.visibilityState === "visible" });
  document.addEventListener("visibilitychange", onVisibility);
  canvas.hidden = false;
  try {
    const playing = runtime.play(scene, (event) => {
      if (event.type === "frame") {
        const began = performance.now();  // the page's work for a frame: drawing it and the score
        draw(canvas, event.frame, assets);
        stats.firstFrameAt ??= performance.now();
        if (event.step > 0) {
          stats.firstStepAt ??= performance.now();
          stats.steps += 1;
        }
        if (scene.show_score) status(`Score: ${round(event.score)}`);
        if (stats.frameTimes.length < 100_000) stats.frameTimes.push([event.work_ms, performance.now() - began]);
      } else if (event.type === "steps") {
        send({ type: TYPE.steps, steps: event.steps });
      } else if (event.type === "send") {  // a multiplayer game's input, readiness and state hashes
        send(event.message);
      } else if (event.type === "episode") {
        const score = scene.show_score ? ` Your score so far: ${round(event.score)}.` : "";
        status(`Episode ${event.episode + 1} of ${event.episodes}.${score}`);
      }
    });
    started?.();
    return await playing;
  } finally {
    controls.stop();
    document.removeEventListener("visibilitychange", onVisibility);
  }
}

const round = (x) => Math.round(x * 100) / 100;

// Keys the scene maps to actions: for "held" the keys down now (oldest first), otherwise each press.
function keyControls(scene, forward) {
  const held = [];
  const mapped = (event) => Object.hasOwn(scene.keys, event.key);
  const down = (event) => {
    if (!mapped(event)) return;
    event.preventDefault();
    if (scene.input === "held") {
      if (!held.includes(event.key)) held.push(event.key);
      forward({ held: held.slice() });
    } else if (!event.repeat) {
      forward({ press: event.key });
    }
  };
  const up = (event) => {
    if (!mapped(event) || scene.input !== "held") return;
    const at = held.indexOf(event.key);
    if (at >= 0) held.splice(at, 1);
    forward({ held: held.slice() });
  };
  const blur = () => {
    held.length = 0;
    if (scene.input === "held") forward({ held: [] });
  };
  window.addEventListener("keydown", down);
  window.addEventListener("keyup", up);
  window.addEventListener("blur", blur);
  return {
    stop: () => {
      window.removeEventListener("keydown", down);
      window.removeEventListener("keyup", up);
      window.removeEventListener("blur", blur);
    },
  };
}

// The scene's images, loaded before the first frame so a drawing never waits for one.
async function loadAssets(scene) {
  const entries = await Promise.all((scene.assets || []).map((name) => new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve([name, image]);
    image.onerror = () => reject(new Error(`the image ${name} could not be loaded`));
    image.src = `/assets/${encodeURIComponent(scene.scene_id.split("#")[0])}/${encodeURIComponent(name)}`;
  })));
  return Object.fromEntries(entries);
}

// A frame (docs/games.md): a drawing in its own units, or an RGB image; scaled to the canvas's width.
function draw(canvas, frame, assets) {
  const width = frame.kind === "rgb" ? frame.width : frame.drawing.width;
  const height = frame.kind === "rgb" ? frame.height : frame.drawing.height;
  const pixels = Math.round(canvas.clientWidth * (window.devicePixelRatio || 1)) || 480;
  const scale = pixels / width;
  if (canvas.width !== pixels || canvas.height !== Math.round(height * scale)) {
    canvas.width = pixels;
    canvas.height = Math.round(height * scale);
  }
  const ctx = canvas.getContext("2d");
  if (frame.kind === "rgb") return drawImage(ctx, frame, canvas);
  const drawing = frame.drawing;
  ctx.setTransform(scale, 0, 0, scale, 0, 0);
  ctx.fillStyle = drawing.background || "#fff";
  ctx.fillRect(0, 0, width, height);
  for (const shape of drawing.shapes) {
    ctx.lineWidth = shape.line_width ?? 1 / scale;
    if (shape.kind === "rect") {
      if (shape.fill) { ctx.fillStyle = shape.fill; ctx.fillRect(shape.x, shape.y, shape.w, shape.h); }
      if (shape.stroke) { ctx.strokeStyle = shape.stroke; ctx.strokeRect(shape.x, shape.y, shape.w, shape.h); }
    } else if (shape.kind === "circle") {
      ctx.beginPath();
      ctx.arc(shape.x, shape.y, shape.r, 0, 2 * Math.PI);
      if (shape.fill) { ctx.fillStyle = shape.fill; ctx.fill(); }
      if (shape.stroke) { ctx.strokeStyle = shape.stroke; ctx.stroke(); }
    } else if (shape.kind === "line") {
      ctx.beginPath();
      ctx.moveTo(shape.x1, shape.y1);
      ctx.lineTo(shape.x2, shape.y2);
      ctx.strokeStyle = shape.stroke || "#000";
      ctx.stroke();
    } else if (shape.kind === "text") {
      ctx.fillStyle = shape.fill || "#000";
      ctx.font = `${shape.size ?? height / 20}px system-ui, sans-serif`;
      ctx.textAlign = shape.align || "left";
      ctx.textBaseline = "middle";
      ctx.fillText(shape.text, shape.x, shape.y);
    } else if (shape.kind === "image") {
      ctx.drawImage(assets[shape.asset], shape.x, shape.y, shape.w, shape.h);
    }
  }
  ctx.setTransform(1, 0, 0, 1, 0, 0);
}

function drawImage(ctx, frame, canvas) {
  const rgb = new Uint8Array(frame.data), rgba = new Uint8ClampedArray(frame.width * frame.height * 4);
  for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
    rgba[j] = rgb[i]; rgba[j + 1] = rgb[i + 1]; rgba[j + 2] = rgb[i + 2]; rgba[j + 3] = 255;
  }
  const small = new OffscreenCanvas(frame.width, frame.height);
  small.getContext("2d").putImageData(new ImageData(rgba, frame.width, frame.height), 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
}
