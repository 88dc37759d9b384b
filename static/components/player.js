// The Decode tab's token view and step player (the `js_on_load` of its gr.HTML; Gradio gives it
// `element`, `props`, `trigger` and `watch`). The server sends a run's states once, as segments
// (explorer/views/player.py) inside the view's HTML; this script replays them: the step slider,
// play/pause, the arrow keys, Home/End and the colour selector update the tokens and move the
// step marker of every figure of the tab without a server round trip. While a run streams, each
// frame carries only its new steps, which are appended here.
//
// Every token string arrives escaped by the server; this script only moves those spans (and a gated
// run's step lines, escaped there too) around and writes numbers and fixed words, never text from
// the model or the user.

const FIGURES = ["heatmap", "changes", "order", "bars", "violation-heatmap", "energy-heatmap"];
const MARKER = "selected step";
const RAMP = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"];
const COLOUR_BY = {
  step: "commit step: early → late",
  prob: "probability when committed: 0 → 1",
  entropy: "entropy when committed (nats): 0 → run's max",
  violation: "violation score (nats): 0 → most negative",
  checker: "story checker: ✓ fine · ✗ blamed · ! involved",
};
const SPEEDS = [1, 2, 4, 8, 16, 32];
// A canvas model's run fills the analysis section's plots with the canvas's maps: their labels, by
// elem_id (as explorer/ui/view.py CANVAS_TITLES). A masked run gets the labels the page was built with.
const CANVAS_LABELS = {
  "violation-heatmap": "Accepted tokens", "energy-heatmap": "Argmax flips", "pairwise-s": "Entropy of the canvas",
  "pairwise-a": "Stop criteria", "candidates": "Noise going in",
};

const state = {
  key: null, run: null, G: 0, steps: [], starts: [], html: [], index: 0, follow: true, done: false,
  colour: "step", speed: 4, timer: null, entropyTop: 1, checked: false, notify: null, url: null,
  meta: [], styled: [], styleKey: "", shown: [], nodes: null, heatCols: [], heatSteps: [], gates: {},
  canvas: false,
};
const host = element.closest("#tokens") || element;  // the component's container (its elem_id)
host.explorerPlayer = state;

const $ = (selector) => element.querySelector(selector);

function readPayload() {
  const data = $("template.player-data");  // inert: a template's content is never rendered or run
  if (!data) return null;
  try { return JSON.parse(data.content.textContent); } catch (error) { return null; }
}

function load(payload) {
  if (payload.reset || payload.key !== state.key) {
    Object.assign(state, {
      key: payload.key, run: payload.run, G: payload.G, steps: [], done: false, follow: true,
      starts: Array.from({length: payload.G}, () => []), html: Array.from({length: payload.G}, () => []),
      meta: Array.from({length: payload.G}, () => []), styled: Array.from({length: payload.G}, () => []),
      shown: new Int32Array(payload.G).fill(-1), nodes: null, lineStep: undefined, lineKey: "",
      heatCols: [], heatSteps: [], gates: {},
      entropyTop: payload.entropy_top || 1, checked: !!payload.checked, canvas: !!payload.canvas,
    });
    stop();
  }
  if (payload.run != null) state.run = payload.run;
  state.done = !!payload.done;
  for (const [position, start, html] of payload.seg) {  // each position's segments arrive in step order
    const starts = state.starts[position], spans = state.html[position];
    const meta = state.meta[position], styled = state.styled[position];
    let i = starts.length;
    while (i > 0 && starts[i - 1] > start) i -= 1;
    if (i > 0 && starts[i - 1] === start) {  // re-sent: replaces
      spans[i - 1] = html; meta[i - 1] = parseMeta(html); styled[i - 1] = undefined;
      continue;
    }
    starts.splice(i, 0, start);
    spans.splice(i, 0, html);
    meta.splice(i, 0, parseMeta(html));
    styled.splice(i, 0, undefined);
    state.shown[position] = -1;  // what it shows may have changed
  }
  if (payload.gates) Object.assign(state.gates, payload.gates);  // a gated run's lines, escaped by the server
  state.steps.push(...payload.steps);
  if (payload.open !== undefined && payload.open !== null) {
    state.index = Math.max(0, state.steps.indexOf(payload.open));
    state.follow = false;
  } else if (state.follow) {
    state.index = Math.max(0, state.steps.length - 1);
  }
  if (payload.heat) {
    state.heatCols.push(...payload.heat.cols);
    state.heatSteps.push(...payload.steps);
    syncLiveHeatmap();
  }
}

// ---- the token line -----------------------------------------------------------------------------

function segmentAt(starts, step) {
  let lo = 0, hi = starts.length - 1;  // the last start <= step (starts[0] is -1: always found)
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (starts[mid] <= step) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// What a segment's span is coloured by, read once from its attributes (numbers, or undefined).
function parseMeta(html) {
  const open = html.slice(0, html.indexOf(">"));
  const get = (name) => { const m = open.match(new RegExp(` data-${name}="([^"]*)"`)); return m ? m[1] : undefined; };
  return {c: get("c"), p: get("p"), h: get("h"), v: get("v"), k: get("k"), kc: get("kc")};
}

// A segment's span with its colour and classes for the colouring chosen (cached per colouring;
// the step colouring also depends on the run's last step, which grows while it streams).
function styledSpan(position, i, step) {
  const key = state.colour === "step" ? `step:${lastStep()}` : state.colour;
  if (key !== state.styleKey) {
    state.styleKey = key;
    for (const row of state.styled) row.fill(undefined);
  }
  let html = state.styled[position][i];
  if (html === undefined) {
    const meta = state.meta[position][i];
    if (meta.c === undefined) {
      html = state.html[position][i];  // masked: no colour
    } else {
      const background = backgroundOf(meta);
      const style = background === null ? "" : ` style="background: ${background}; color: ${textColour(background)}"`;
      const classes = "tok" + (background === null ? " no-value" : "") + (meta.k !== undefined ? " checker-flag" : "");
      html = state.html[position][i].replace(/^<span class="tok( just)?/, `<span${style} class="${classes}`);
    }
    state.styled[position][i] = html;
  }
  const meta = state.meta[position][i];
  return meta.c !== undefined && Number(meta.c) === step ? html.replace('class="tok', 'class="tok just') : html;
}

function renderTokens() {
  const line = $(".tokens-line");
  if (!line || !state.G) return;
  const step = state.steps.length ? state.steps[state.index] : -1;
  const want = new Int32Array(state.G);
  let changed = 0;
  for (let p = 0; p < state.G; p++) {
    want[p] = segmentAt(state.starts[p], step);
    if (want[p] !== state.shown[p]) changed += 1;
  }
  const nodes = state.nodes;
  const key = state.colour === "step" ? `step:${lastStep()}` : state.colour;  // the colours' key (styledSpan)
  const fresh = !nodes || nodes.length !== state.G || !nodes[0].isConnected || state.lineStep === undefined ||
    key !== state.lineKey;
  if (fresh || changed > state.G / 8) {  // a long jump: the whole line in one parse
    const prompt = line.querySelector(".prompt");
    const parts = prompt ? [prompt.outerHTML] : [];
    for (let p = 0; p < state.G; p++) parts.push(styledSpan(p, want[p], step));
    line.innerHTML = parts.join(" ");
    state.nodes = Array.from(line.querySelectorAll(":scope > .tok"));
  } else {  // a short move: only the positions whose span changes, and the outlines
    const spare = document.createElement("template");
    for (let p = 0; p < state.G; p++) {
      const outlined = (c) => c !== undefined && (Number(c) === step || Number(c) === state.lineStep);
      const meta = state.meta[p][want[p]];
      if (want[p] === state.shown[p] && !outlined(meta.c)) continue;
      spare.innerHTML = styledSpan(p, want[p], step);
      const node = spare.content.firstElementChild;
      nodes[p].replaceWith(node);
      nodes[p] = node;
    }
  }
  state.shown = want;
  state.lineStep = step;
  state.lineKey = key;
}

function rampColour(fraction) {
  const scaled = Math.min(Math.max(fraction, 0), 1) * (RAMP.length - 1);
  const i = Math.min(Math.floor(scaled), RAMP.length - 2), t = scaled - i;
  const a = RAMP[i], b = RAMP[i + 1];
  let out = "#";
  for (const k of [1, 3, 5]) {
    const x = parseInt(a.slice(k, k + 2), 16), y = parseInt(b.slice(k, k + 2), 16);
    out += Math.round(x + (y - x) * t).toString(16).padStart(2, "0");
  }
  return out;
}

function textColour(background) {
  const linear = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
  const [r, g, b] = [1, 3, 5].map((k) => linear(parseInt(background.slice(k, k + 2), 16)));
  const L = 0.2126 * r + 0.7152 * g + 0.0722 * b;
  return (L + 0.05) / 0.05 >= 1.05 / (L + 0.05) ? "#000000" : "#ffffff";
}

function backgroundOf(d) {
  switch (state.colour) {
    case "step": return rampColour(Number(d.c) / Math.max(lastStep(), 1));
    case "prob": return d.p === undefined ? null : rampColour(Number(d.p));
    case "entropy": return d.h === undefined ? null : rampColour(Number(d.h) / state.entropyTop);
    case "violation": {
      if (d.v === undefined) return null;
      const v = Math.min(Math.max(-Number(d.v) / 3, 0), 1);  // 0 nats white -> -3 nats or less deep red
      const mix = (w, r) => Math.round(w + (r - w) * v).toString(16).padStart(2, "0");
      return "#" + mix(255, 178) + mix(255, 24) + mix(255, 43);
    }
    case "checker":
      if (!state.checked) return null;
      return d.k === undefined ? "#2f9e44" : d.kc === "1" ? "#e03131" : "#f08c00";
  }
  return null;
}

function lastStep() { return state.steps.length ? state.steps[state.steps.length - 1] : 0; }

// ---- the bar: slider, play/pause, speed, colour ------------------------------------------------------

function ensureBar() {
  let bar = $(".player-bar");
  if (!bar) {
    bar = document.createElement("div");
    bar.className = "player-bar";
    bar.innerHTML = `
      <button type="button" class="pl-first" title="First step (Home)" aria-label="First step">|◀</button>
      <button type="button" class="pl-prev" title="Previous step (←)" aria-label="Previous step">◀</button>
      <button type="button" class="pl-play" title="Play / pause (space)" aria-label="Play">▶ Play</button>
      <button type="button" class="pl-next" title="Next step (→)" aria-label="Next step">▶</button>
      <button type="button" class="pl-last" title="Last step (End)" aria-label="Last step">▶|</button>
      <input type="range" class="pl-range" min="0" max="0" value="0" step="1" aria-label="Step">
      <span class="pl-label"></span>
      <a class="pl-link" href="#" title="A link that opens this run at this step">link to this step</a>
      <label class="pl-speed-label">speed <select class="pl-speed" aria-label="Playback speed">
        ${SPEEDS.map((s) => `<option value="${s}">${s} steps/s</option>`).join("")}</select></label>
      <label class="pl-colour-label">colour by <select class="pl-colour" aria-label="Colour tokens by">
        ${Object.keys(COLOUR_BY).map((c) => `<option value="${c}">${c}</option>`).join("")}</select></label>
      <div class="pl-key"></div>`;
    const view = $(".tokens-view");
    (view ? view.parentNode : element).insertBefore(bar, view);
    bar.querySelector(".pl-first").onclick = () => go(0);
    bar.querySelector(".pl-prev").onclick = () => go(state.index - 1);
    bar.querySelector(".pl-next").onclick = () => go(state.index + 1);
    bar.querySelector(".pl-last").onclick = () => go(state.steps.length - 1);
    bar.querySelector(".pl-play").onclick = () => (state.timer ? stop() : play());
    bar.querySelector(".pl-range").oninput = (event) => go(Number(event.target.value));
    bar.querySelector(".pl-speed").onchange = (event) => { state.speed = Number(event.target.value); if (state.timer) { stop(); play(); } };
    bar.querySelector(".pl-colour").onchange = (event) => {
      state.colour = event.target.value;
      state.lineStep = undefined;  // every span is coloured again
      show(false);
    };
  }
  bar.querySelector(".pl-speed").value = String(state.speed);
  bar.querySelector(".pl-colour").value = state.colour;
  return bar;
}

function updateBar() {
  const bar = ensureBar();
  const range = bar.querySelector(".pl-range");
  range.max = String(Math.max(state.steps.length - 1, 0));
  range.value = String(state.index);
  range.disabled = !state.steps.length;
  const step = state.steps.length ? state.steps[state.index] : null;
  bar.querySelector(".pl-label").textContent = step === null ? "no step yet"
    : `after step ${step} (steps ${state.steps[0]}–${lastStep()})` + (state.done ? "" : " · decoding…");
  const link = bar.querySelector(".pl-link"), href = permalink();
  link.style.display = href ? "" : "none";
  if (href) link.href = href;
  bar.querySelector(".pl-play").textContent = state.timer ? "❚❚ Pause" : "▶ Play";
  bar.querySelector(".pl-play").setAttribute("aria-label", state.timer ? "Pause" : "Play");
  // A canvas model's run: its spans carry their own colour and marks (explorer/views/canvas_tokens.py),
  // so there is no colouring to pick and the key says what those mean.
  bar.querySelector(".pl-colour-label").style.display = state.canvas ? "none" : "";
  if (state.canvas) {
    bar.querySelector(".pl-key").innerHTML = "colour = the step the token was kept at: early → late " +
      '<span class="ramp pl-ramp pl-ramp-step"></span>' + (step === null ? "" : `; what step ${step} did: ` +
      '<b class="pl-key-accepted">✓</b> accepted · <b class="pl-key-renoised">↺</b> re-noised · ' +
      '<span class="pl-key-flip">pink top bar</span> = argmax changed (key under the tokens)');
    return;
  }
  const key = COLOUR_BY[state.colour];
  bar.querySelector(".pl-key").innerHTML =
    `colour = ${key} <span class="ramp pl-ramp pl-ramp-${state.colour}"></span>` +
    (state.colour === "checker" && !state.checked ? " (not checked: another model, or masks left)" : "") +
    (step === null ? "" : `; <span class="tok just legend-just">outlined</span> = committed at step ${step}`) +
    (state.checked ? '; <span class="checker-flag-sample">wavy underline</span> = the story checker objects (hover)' : "");
}

function go(index) {
  if (!state.steps.length) return;
  state.index = Math.min(Math.max(index, 0), state.steps.length - 1);
  state.follow = state.index === state.steps.length - 1 && !state.done;
  show(true);
}

function play() {
  if (state.index >= state.steps.length - 1) state.index = 0;
  state.timer = setInterval(() => {
    if (state.index >= state.steps.length - 1) { stop(); return; }
    go(state.index + 1);
  }, 1000 / state.speed);
  updateBar();
}

function stop() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
  if ($(".player-bar")) updateBar();
}

function markPicked() {
  const picked = Number(element.dataset.pickPos);
  if (element.dataset.pickRun !== String(state.run) || Number.isNaN(picked) || !state.nodes) return;
  const tok = state.nodes[picked];
  if (tok && !tok.classList.contains("picked")) tok.classList.add("picked");
}

// A gated run's line under the tokens: what the step shown proposed and kept (server-escaped HTML).
function renderGate() {
  const line = $(".gate-line");
  if (line) line.innerHTML = state.gates[String(state.steps.length ? state.steps[state.index] : -1)] || "";
}

// The analysis plots' labels for the run shown (Gradio draws a label as an icon, then a text node).
function relabel() {
  for (const [id, canvasLabel] of Object.entries(CANVAS_LABELS)) {
    const label = document.querySelector(`#${id} [data-testid="block-label"]`);
    const text = label && Array.from(label.childNodes).reverse().find((node) => node.nodeType === Node.TEXT_NODE);
    if (!text) continue;
    if (label.dataset.maskedLabel === undefined) label.dataset.maskedLabel = text.data.trim();
    const want = state.canvas ? canvasLabel : label.dataset.maskedLabel;
    if (text.data.trim() !== want) text.data = ` ${want}`;
  }
}

function show(moved) {
  renderTokens();
  renderGate();
  markPicked();
  updateBar();
  moveMarkers();
  host.dataset.step = String(state.steps.length ? state.steps[state.index] : -1);
  if (moved) afterMove();
}

// ---- the figures' step markers ------------------------------------------------------------------
// Each figure arrives from the server with its step marker (a line and a label named MARKER). A
// Plotly relayout costs ~20 ms a figure, so the page hides that marker once per figure and draws
// its own line over the plot area, placed from the figure's axis: moving it costs nothing.

function moveMarkers() {
  if (!state.steps.length) return;
  const step = state.steps[state.index];
  for (const id of FIGURES) {
    const gd = document.querySelector(`#${id} .js-plotly-plot`);
    if (!gd || !gd._fullLayout || !gd._fullLayout.xaxis) continue;
    if (!gd.explorerHooked) {  // a redraw (new figure, zoom, resize) places the marker again
      gd.explorerHooked = true;
      gd.on("plotly_afterplot", scheduleMarkers);
    }
    placeMarker(gd, step);
  }
}

let markersQueued = false;
function scheduleMarkers() {
  if (markersQueued) return;
  markersQueued = true;
  requestAnimationFrame(() => { markersQueued = false; moveMarkers(); if (!state.done) syncLiveHeatmap(); });
}

function placeMarker(gd, step) {
  const shapes = gd.layout.shapes || [];
  const i = shapes.findIndex((shape) => shape.name === MARKER);
  let marker = gd.querySelector(":scope > .step-marker");
  if (i < 0) {  // a figure with no step axis (an empty state)
    if (marker) marker.style.display = "none";
    return;
  }
  if (shapes[i].visible !== false) {  // a new figure: hide Plotly's own marker, once
    const update = {[`shapes[${i}].visible`]: false};
    const j = (gd.layout.annotations || []).findIndex((a) => a.name === MARKER);
    if (j >= 0) update[`annotations[${j}].visible`] = false;
    window.Plotly.relayout(gd, update);
  }
  if (!marker) {
    marker = document.createElement("div");
    marker.className = "step-marker";
    marker.innerHTML = '<div class="step-marker-tag"></div>';
    gd.style.position = "relative";
    gd.appendChild(marker);
  }
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const x = xa._offset + xa.l2p(step);
  const inside = x >= xa._offset - 1 && x <= xa._offset + xa._length + 1;
  marker.style.display = inside ? "" : "none";
  marker.style.left = `${x}px`;
  marker.style.top = `${ya._offset}px`;
  marker.style.height = `${ya._length}px`;
  const tag = `step ${step}`;
  if (marker.firstChild.textContent !== tag) marker.firstChild.textContent = tag;
}

// The live heatmap's columns, kept here: a frame that arrives before the figure is drawn (or while
// it is drawn anew) is appended once the figure is there.
function syncLiveHeatmap() {
  const gd = document.querySelector("#heatmap .js-plotly-plot");
  if (!window.Plotly || !gd || !gd.data || !gd.data[0] || gd.data[0].meta !== "live-heatmap") return;
  if (gd.data[0].uid !== state.key) window.Plotly.restyle(gd, {uid: state.key, z: [[]], x: [[]]}, [0]);
  const have = gd.data[0].z.length, want = state.heatCols.length;
  if (have >= want) return;
  window.Plotly.extendTraces(gd, {z: [state.heatCols.slice(have)], x: [state.heatSteps.slice(have)]}, [0]);
  window.Plotly.relayout(gd, {"xaxis.range": [-0.5, Math.max(lastStep(), 1) + 0.5]});
}

// ---- after a move: the server's per-step figures, the permalink -------------------------------------

// The address of the state shown (?run=ID&step=K), as a link in the bar. The page's own address
// is left alone: Plotly draws colour bars with url(<page address>#gradient), which a rewritten
// address would break.
function permalink() {
  if (state.run == null || !state.done || !state.steps.length) return null;
  const url = new URL(window.location.href);
  url.hash = "";
  url.search = `?run=${state.run}&step=${state.steps[state.index]}`;
  return url.href;
}

function afterMove() {
  clearTimeout(state.notify);
  const step = state.steps[state.index];
  state.notify = setTimeout(() => {
    if (state.run != null && state.done) trigger("input", {step: step, run: state.run});
  }, 250);
}

// ---- keys, clicks and new values ----------------------------------------------------------------

if (!window.explorerPlayerKeys) {
  window.explorerPlayerKeys = true;
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName)) &&
        !(target.classList && target.classList.contains("pl-range"))) return;
    const player = document.querySelector("#tokens");
    const s = player && player.explorerPlayer;
    if (!s || !s.steps.length || !player.offsetParent) return;  // the Decode tab is not shown
    const moves = {ArrowLeft: s.index - 1, ArrowRight: s.index + 1, Home: 0, End: s.steps.length - 1};
    if (event.key in moves) {
      event.preventDefault();
      player.explorerPlayer.go(moves[event.key]);
    } else if (event.key === " " && target === document.body) {
      event.preventDefault();
      player.explorerPlayer.toggle();
    }
  });
}
state.go = go;
state.feed = (payload) => { load(payload); relabel(); show(false); };  // what a new value does (benchmarks, tests)
state.toggle = () => (state.timer ? stop() : play());

// A click on a token: its position, the run and the step shown, to the server (the branch panel).
element.addEventListener("click", (event) => {
  const tok = event.target.closest(".tokens-line .tok");
  if (!tok || state.run == null) return;
  const tokens = Array.from(element.querySelectorAll(".tokens-line .tok"));
  const position = tokens.indexOf(tok);
  element.querySelectorAll(".tok.picked").forEach((el) => el.classList.remove("picked"));
  tok.classList.add("picked");
  element.dataset.pickRun = String(state.run);
  element.dataset.pickPos = String(position);
  trigger("click", {position: position, run: state.run, step: state.steps[state.index]});
});

function refresh() {
  const payload = readPayload();
  if (!payload) {  // a view the server drew whole (no run, or the API's): shown as it came
    stop();
    Object.assign(state, {key: null, run: null, G: 0, steps: [], nodes: null, canvas: false});
    relabel();
    return;
  }
  load(payload);
  relabel();
  ensureBar();
  show(false);
}

// A figure the server sends anew (a run opened or ended, another metric) gets its marker at once,
// not on the first move.
if (!window.explorerFigureWatch) {
  const figures = FIGURES.map((id) => `#${id}`).join(", ");
  const relevant = (node) => node && node.closest && node.closest(figures) &&
    !node.closest(".step-marker, .hoverlayer, .modebar-container");
  window.explorerFigureWatch = new MutationObserver((records) => {
    if (records.some((r) => relevant(r.target.nodeType === 1 ? r.target : r.target.parentElement))) {
      const player = document.querySelector("#tokens");
      if (player && player.explorerPlayer) player.explorerPlayer.markers();
    }
  });
  window.explorerFigureWatch.observe(document.querySelector(".gradio-container") || document.body, {childList: true, subtree: true});
}
state.markers = scheduleMarkers;

watch("value", refresh);
refresh();
