// The page: the model's retention curve, and one query searched at three budgets side by side.
// Plain JS and SVG, no libraries: everything comes from this server's own API.
"use strict";

const state = { dims: [], fullDim: 0, model: "", hasIndex: false, k: 10, full: null, serial: {} };
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value || sessionStorage.getItem("matryoshka-key");
  if (key) headers.Authorization = "Bearer " + key;
  const options = body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) };
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) $("key-box").hidden = false;
  if (!response.ok) throw new Error((data.error && data.error.message) || response.statusText);
  return data;
}

function svg(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

function drawCurve(curve) {
  const chart = $("curve");
  chart.replaceChildren();
  const [width, height, left, right, top, bottom, pad] = [640, 280, 56, 20, 26, 44, 22];
  const percents = curve.retention.map((r) => 100 * r);
  const low = Math.max(0, Math.floor((Math.min(...percents) - 5) / 10) * 10);
  const logs = curve.dims.map(Math.log2);
  const x = (dim) => left + pad + ((Math.log2(dim) - logs[0]) / (logs[logs.length - 1] - logs[0] || 1)) * (width - left - right - 2 * pad);
  const y = (percent) => top + ((100 - percent) / (100 - low || 1)) * (height - top - bottom);
  for (let p = low; p <= 100; p += 10) {
    chart.append(svg("line", { class: "grid", x1: left, x2: width - right, y1: y(p), y2: y(p) }));
    chart.append(svg("text", { x: left - 8, y: y(p) + 4, "text-anchor": "end", class: "label" }, p + "%"));
  }
  chart.append(svg("line", { class: "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom }));
  chart.append(svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: height - bottom }));
  const points = curve.dims.map((dim, i) => `${x(dim)},${y(percents[i])}`).join(" ");
  chart.append(svg("polyline", { class: "line", points }));
  curve.dims.forEach((dim, i) => {
    const point = svg("circle", { class: "point", cx: x(dim), cy: y(percents[i]), r: 4.5, "data-dim": dim });
    point.append(svg("title", {}, `${dim} dims: ${curve.scores[i].toFixed(4)} (${percents[i].toFixed(1)}% of full)`));
    chart.append(point);
    chart.append(svg("text", { x: x(dim), y: height - bottom + 16, "text-anchor": "middle" }, dim));
    chart.append(svg("text", { x: x(dim), y: y(percents[i]) - 9, "text-anchor": "middle", class: "label" },
      percents[i].toFixed(0) + "%"));
  });
  chart.append(svg("text", { x: (width + left) / 2, y: height - 6, "text-anchor": "middle", class: "label" },
    "dimensions (prefix length, log scale)"));
  $("curve-note").textContent = `${curve.metric} on ${curve.pairs} ${curve.dataset} pairs, as a share of the ` +
    `full ${curve.dims[curve.dims.length - 1]}-dim score (${curve.scores[curve.scores.length - 1].toFixed(3)}); ${curve.source}.`;
}

function sliderDim() {
  return state.dims[Number($("dim-slider").value)];
}

const COLUMNS = {
  "col-slider": () => ({ title: `${sliderDim()} dims`, body: { dimensions: sliderDim() } }),
  "col-funnel": () => ({ title: "funnel (the index's default)", body: {} }),
  "col-full": () => ({ title: `full ${state.fullDim} dims`, body: { dimensions: state.fullDim } }),
};

async function runColumn(id) {
  const query = $("query").value.trim();
  if (!query) return;
  const { title, body } = COLUMNS[id]();
  const serial = (state.serial[id] = (state.serial[id] || 0) + 1);
  const column = $(id);
  column.classList.add("busy");
  const started = performance.now();
  try {
    const result = await api("/v1/search", { query, k: state.k, ...body });
    if (serial !== state.serial[id]) return; // a newer request for this column is under way
    result.roundTripMs = performance.now() - started;
    column.result = result;
    column.title = title;
    if (id === "col-full") state.full = result;
    render(column, title, result);
  } catch (error) {
    if (serial === state.serial[id]) column.replaceChildren(Object.assign(document.createElement("p"),
      { className: "error", textContent: error.message }));
  } finally {
    column.classList.remove("busy");
  }
}

function shorten(text, length) {
  return text.length > length ? text.slice(0, length - 1) + "…" : text;
}

function render(column, title, result) {
  const fullIds = state.full ? new Set(state.full.hits.map((hit) => hit.id)) : null;
  const isFull = column.id === "col-full";
  const heading = Object.assign(document.createElement("h3"), { textContent: title });
  const stages = result.stages.map((stage) => stage.stage).join(" → ");
  const meta = Object.assign(document.createElement("div"), { className: "meta" });
  meta.textContent = `${result.roundTripMs.toFixed(0)} ms (server ${result.timings_ms.total.toFixed(1)} ms) · ` +
    `${result.bytes_per_vector} B/vector · ${stages}`;
  const list = document.createElement("ol");
  let changed = 0;
  for (const hit of result.hits) {
    const item = document.createElement("li");
    item.dataset.id = hit.id;
    if (fullIds && !isFull && !fullIds.has(hit.id)) { item.classList.add("changed"); changed += 1; }
    const score = Object.assign(document.createElement("span"), { className: "score", textContent: hit.score.toFixed(3) });
    item.append(score, document.createTextNode(shorten(hit.text || hit.id, 240)));
    item.title = `id ${hit.id}`;
    list.append(item);
  }
  const children = [heading, meta, list];
  if (fullIds && !isFull) {
    const ids = new Set(result.hits.map((hit) => hit.id));
    const missed = state.full.hits.filter((hit) => !ids.has(hit.id));
    const summary = Object.assign(document.createElement("div"), { className: "meta" });
    summary.textContent = `${result.hits.length - changed} of ${result.hits.length} shared with full dims`;
    children.splice(2, 0, summary);
    if (missed.length) {
      const missedList = Object.assign(document.createElement("div"), { className: "meta" });
      missedList.append("missed: ");
      for (const hit of missed) missedList.append(Object.assign(document.createElement("span"),
        { className: "missed", textContent: shorten(hit.text || hit.id, 60) + "  " }));
      children.push(missedList);
    }
  }
  column.dataset.dims = result.stages.length ? result.stages[result.stages.length - 1].dim : "";
  column.dataset.ids = result.hits.map((hit) => hit.id).join(",");
  column.replaceChildren(...children);
}

async function searchAll(event) {
  if (event) event.preventDefault();
  await runColumn("col-full"); // first, so the other columns are compared with it
  await Promise.all([runColumn("col-slider"), runColumn("col-funnel")]);
}

let sliderTimer = null;
function onSlider() {
  $("dim-value").textContent = sliderDim();
  clearTimeout(sliderTimer);
  sliderTimer = setTimeout(() => runColumn("col-slider"), 120);
}

async function start() {
  try {
    const health = await api("/health");
    const models = await api("/v1/models");
    const card = models.data[0];
    state.model = card.id;
    state.fullDim = card.full_dim;
    state.hasIndex = health.index !== null;
    state.dims = card.supported_dims ? [...card.supported_dims].sort((a, b) => a - b)
      : [8, 16, 32, 64, 128, 256, 512, 768, 1024].filter((d) => d < card.full_dim).concat([card.full_dim]);
    $("model-line").textContent = `${card.id}: ${card.full_dim} dims; ` +
      (card.supported_dims ? `trained for ${card.supported_dims.join(", ")}` : "every prefix usable") +
      (state.hasIndex ? `; index ${health.index.name} with ${health.index.rows} rows` : "; no index loaded");
    const slider = $("dim-slider");
    slider.max = state.dims.length - 1;
    slider.value = Math.max(0, state.dims.indexOf(32));
    $("dim-value").textContent = sliderDim();
    if (!state.listening) {
      slider.addEventListener("input", onSlider);
      $("search-form").addEventListener("submit", searchAll);
      state.listening = true;
    }
    if (!state.hasIndex) {
      $("search-note").textContent = "Start the server with --index DIR to search here.";
      $("search-form").querySelectorAll("input, button").forEach((el) => { el.disabled = true; });
    } else {
      $("search-note").textContent = `Top ${state.k} at the slider's dims, through the index's default funnel, and at full dims.`;
    }
  } catch (error) {
    $("model-line").textContent = "Cannot reach the API: " + error.message;
    return;
  }
  try {
    drawCurve(await api("/v1/retention"));
  } catch (error) {
    $("curve-note").textContent = "No retention curve: " + error.message;
  }
}

$("api-key").addEventListener("change", () => { sessionStorage.setItem("matryoshka-key", $("api-key").value); start(); });
start();
