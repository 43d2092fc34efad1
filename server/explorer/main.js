// The explorer page: choose models and an image, ask the server (api.js), draw the answer (render.js).
//
// The flow: init() lists the models and the examples; an image (example, file, drop or drawing)
// becomes `state.image`; classify() checks each model's response size against the server's limit,
// sends the image through one or two models, and renderResults() draws a panel per model. Changing
// the colour scale or the window's width redraws from `state.results` without asking the server again.

import * as api from "./api.js";
import { createDrawPad, PAD_SIDE } from "./drawpad.js";
import { drawChannel, drawColorbar, drawFeatureGrid, drawGray, drawVector, featureStats, range, short } from "./render.js";

const $ = (selector, root = document) => root.querySelector(selector);
const TOP_K = 5;

const models = new Map();   // name -> {name, ready, reason, parameters, classes, taps: [{name, shape}]}
const state = {
  image: null,              // {name, bytes: ArrayBuffer, url}
  results: [],              // one per model shown: {model, tensors, timings, ms, receivedBytes, requests, skipped}
};
let pad;
let latestClassify = 0;     // a newer image or model choice makes older answers stale

init();

async function init() {
  pad = createDrawPad($("#pad"));
  api.onCall(logCall);
  wireControls();
  drawColorbar($("#colorbar"), 120);
  try {
    await Promise.all([loadModels(), loadExamples()]);
    const loadMs = performance.now();        // since the navigation started
    document.body.dataset.loadMs = loadMs.toFixed(0);
    say(`Ready (${loadMs.toFixed(0)} ms). Pick an example, choose a file, drop one, or draw.`);
  } catch (error) {
    showError(error);
  }
  document.body.dataset.ready = "true";
}

// ---- models and examples ----

async function loadModels() {
  const rows = new Map();     // the index has a row per version: a model is ready when any of its versions is
  for (const entry of await api.listModels()) {
    if (!rows.has(entry.name) || entry.state === "READY") rows.set(entry.name, entry);
  }
  const described = await Promise.all([...rows.values()].map(async (entry) => {
    if (entry.state !== "READY") return { name: entry.name, ready: false, reason: entry.reason };
    const meta = await api.modelMetadata(entry.name);
    const [logits, ...taps] = meta.outputs;
    return {
      name: meta.name, version: meta.versions.at(-1), ready: true, parameters: meta.parameters ?? {},
      classes: logits.shape[1], inputShape: meta.inputs[0].shape,
      taps: taps.map((output) => ({ name: output.name, shape: output.shape.slice(1) })),
    };
  }));
  described.forEach((model) => models.set(model.name, model));
  const selectA = $("#model-a");
  const selectB = $("#model-b");
  selectA.replaceChildren(...described.map(modelOption));
  selectB.replaceChildren(new Option("(no second model)", ""), ...described.map(modelOption));
  const first = described.find((m) => m.name === "lenet_bn" && m.ready) ?? described.find((m) => m.ready);
  if (first) selectA.value = first.name;
  selectA.disabled = selectB.disabled = !first;
  if (!first) throw new Error("the server has no model ready to serve");
  showModelInfo();
}

function modelOption(model) {
  const option = new Option(`${model.name} — ${modelNote(model)}`, model.name);
  option.disabled = !model.ready;
  return option;
}

function modelNote(model) {
  if (!model.ready) return `not serving: ${model.reason}`;
  if (!model.parameters.trained) return "UNTRAINED (random weights)";
  const accuracy = model.parameters.test_acc;
  return accuracy ? `trained, test accuracy ${(accuracy * 100).toFixed(1)}%` : "trained";
}

async function loadExamples() {
  const names = await api.exampleNames();
  $("#examples").replaceChildren(...names.map((name) => {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.example = name;
    const image = document.createElement("img");
    image.src = `/examples/${encodeURIComponent(name)}`;
    image.alt = "";                        // the button's text says what it shows
    const caption = document.createElement("span");
    caption.textContent = exampleTitle(name);
    button.append(image, caption);
    button.addEventListener("click", async (event) => {
      const response = await fetch(image.src);
      setImage({ name, bytes: await response.arrayBuffer(), url: image.src }, event.timeStamp);
    });
    const item = document.createElement("li");
    item.append(button);
    return item;
  }));
}

/** "9-ankle-boot.png" -> "Ankle boot" */
function exampleTitle(name) {
  const words = name.replace(/\.[a-z]+$/i, "").replace(/^\d+-/, "").replace(/-/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

// ---- sizes: what a response costs, against the server's limit ----

const product = (shape) => shape.reduce((a, b) => a * b, 1);
const itemsize = () => ($("#precision").value === "FP16" ? 2 : 4);
const precisionName = () => ($("#precision").value === "FP16" ? "float16" : "float32");

/** The server's estimate of a response, by the rule its model metadata states (`response_bytes_*` parameters),
 * so the page never asks for more than the server may send: the logits and the taps, each with their framing. */
function responseBytes(model, taps) {
  const p = model.parameters;
  return p.response_bytes_per_image + model.classes * p.response_bytes_per_prediction   // every class ranked (api.js)
    + [{ shape: [model.classes] }, ...taps].reduce((sum, tap) => sum + product(tap.shape) * itemsize() + p.response_bytes_per_output, 0);
}

/** The taps split into requests that each fit the limit; taps too large even alone are skipped. */
function planRequests(model) {
  const limit = model.parameters.max_response_bytes ?? Infinity;
  const groups = [[]];
  const skipped = [];
  for (const tap of model.taps) {
    if (responseBytes(model, [tap]) > limit) skipped.push(tap.name);
    else if (responseBytes(model, [...groups.at(-1), tap]) <= limit) groups.at(-1).push(tap);
    else groups.push([tap]);
  }
  return { model, groups, skipped, bytes: responseBytes(model, model.taps), limit };
}

const megabytes = (bytes) => (bytes >= 2 ** 20 ? `${(bytes / 2 ** 20).toFixed(2)} MB` : `${(bytes / 1024).toFixed(1)} kB`);

function showModelInfo() {
  $("#model-info").replaceChildren(...selectedModels().map((model) => {
    const plan = planRequests(model);
    const over = plan.bytes > plan.limit ? " — over the limit: the page asks before fetching" : "";
    const line = document.createElement("p");
    const name = document.createElement("strong");
    name.textContent = model.name;
    line.append(name, ` v${model.version}: ${modelNote(model)}; ${model.taps.length} feature taps, `
      + `${megabytes(plan.bytes)} per image as ${precisionName()} `
      + `(server limit ${megabytes(plan.limit)})${over}; runs on ${model.parameters.provider}.`);
    return line;
  }));
}

function selectedModels() {
  const names = [$("#model-a").value, $("#model-b").value].filter(Boolean);
  return [...new Set(names)].map((name) => models.get(name)).filter((model) => model?.ready);
}

/** Resolves to "parts", "classify" or "cancel". */
function askAboutSize(plan) {
  const dialog = $("#size-dialog");
  const parts = plan.groups.length;
  $("#size-text").textContent = `The feature maps of ${plan.model.name} come to ${megabytes(plan.bytes)} `
    + `as ${precisionName()}, over the server's message limit of ${megabytes(plan.limit)}. `
    + `Fetch them in ${parts} requests${plan.skipped.length ? ` (leaving out ${plan.skipped.join(", ")}, too large even alone)` : ""}, `
    + "or classify without feature maps?";
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue || "cancel"), { once: true });
  });
}

// ---- classifying ----

/** `clicked`: when the reader asked (an event's timeStamp), for the click-to-rendered time. */
function setImage(image, clicked) {
  state.image = image;
  classify(clicked);
}

async function classify(clicked = performance.now()) {
  if (!state.image) return;
  const run = ++latestClassify;
  hideError();
  const plans = [];
  for (const model of selectedModels()) {
    const plan = planRequests(model);
    if (plan.groups.length > 1 || plan.skipped.length) {
      const asked = performance.now();
      const choice = await askAboutSize(plan);
      clicked += performance.now() - asked;          // the time to answer is the reader's, not the page's
      if (choice === "cancel") return say("Cancelled.");
      if (choice === "classify") Object.assign(plan, { groups: [[]], skipped: model.taps.map((tap) => tap.name) });
    }
    plans.push(plan);
  }
  say(`Classifying ${state.image.name} with ${plans.map((p) => p.model.name).join(" and ")}…`);
  document.body.dataset.busy = "true";
  try {
    const results = await Promise.all(plans.map(runPlan));
    if (run !== latestClassify) return;
    state.results = results;
    renderResults();
    await painted();
    const renderMs = performance.now() - clicked;
    $("#results").dataset.renderMs = renderMs.toFixed(0);
    $("#results").dataset.renders = Number($("#results").dataset.renders ?? 0) + 1;
    const taps = state.results.reduce((sum, r) => sum + Object.keys(r.tensors).length - 2, 0);
    say(`${state.image.name}: ${taps} feature maps drawn ${renderMs.toFixed(0)} ms after the click `
      + `(server round trip ${state.results.map((r) => `${r.model.name} ${r.ms.toFixed(0)} ms`).join(", ")}).`);
    $("#pad-edit").disabled = false;
  } catch (error) {
    showError(error);
  } finally {
    if (run === latestClassify) delete document.body.dataset.busy;
  }
}

/** One model's requests (one, unless the maps are over the limit), merged into one result. */
async function runPlan(plan) {
  const half = $("#precision").value === "FP16";
  const started = performance.now();
  const parts = await Promise.all(plan.groups.map((taps, i) => api.infer(plan.model.name, state.image.bytes, {
    taps: taps.map((tap) => tap.name), half, classes: plan.model.classes, withInput: i === 0,
  })));
  const sum = (key) => parts.reduce((total, part) => total + (part.parameters[key] ?? 0), 0);
  return {
    model: plan.model, skipped: plan.skipped, requests: parts.length,
    tensors: Object.assign({}, ...parts.map((part) => part.tensors)),
    timings: { decode_ms: sum("decode_ms"), queue_ms: sum("queue_ms"), compute_ms: sum("compute_ms"),
               batch_size: parts[0].parameters.batch_size },
    ms: performance.now() - started, receivedBytes: parts.reduce((total, part) => total + part.receivedBytes, 0),
  };
}

/** After the browser has painted what was drawn. */
const painted = () => new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));

// ---- drawing the results ----

function renderResults() {
  const results = $("#results");
  results.classList.toggle("compare", state.results.length > 1);
  results.replaceChildren(...state.results.map(() => $("#panel-template").content.firstElementChild.cloneNode(true)));
  state.results.forEach((result, i) => renderPanel(results.children[i], result));
}

function renderPanel(panel, result) {
  const { model, tensors } = result;
  panel.dataset.model = model.name;
  $(".model-name", panel).textContent = `${model.name} v${model.version}`;
  $(".badges", panel).replaceChildren(badge(modelNote(model), model.parameters.trained ? "trained" : "untrained"), " ",
    badge(model.parameters.provider, "provider"));
  renderTopClasses($(".bars", panel), api.rankedClasses(tensors.logits.data));
  const original = $(".original", panel);
  original.src = state.image.url;
  original.alt = `The image given: ${state.image.name}`;
  const input = tensors.image;
  const [height, width] = input.shape.slice(-2);
  const fitted = $(".fitted", panel);
  drawGray(fitted, input.data, height, width, 112);
  fitted.setAttribute("aria-label", `${state.image.name} as ${model.name} received it: ${width} × ${height} grey levels`);
  renderTimings($(".timings dl", panel), result);
  const list = $(".tap-list", panel);
  for (const tap of model.taps) {
    const item = $("#tap-template").content.firstElementChild.cloneNode(true);
    list.append(item);
    if (tensors[tap.name]) renderTap(item, model, tap.name, tensors[tap.name]);
    else renderSkippedTap(item, tap);
  }
}

function badge(text, kind) {
  const span = document.createElement("span");
  span.className = `badge ${kind}`;
  span.textContent = text;
  return span;
}

function renderTopClasses(list, ranked) {
  list.replaceChildren(...ranked.slice(0, TOP_K).map((c, rank) => {
    const item = document.createElement("li");
    item.className = rank === 0 ? "top" : "";
    item.innerHTML = `<span class="label"></span><span class="bar" aria-hidden="true"><span></span></span>`
      + `<span class="probability">${(c.probability * 100).toFixed(1)}%</span>`;
    $(".label", item).textContent = c.label;
    $(".bar span", item).style.width = `${(c.probability * 100).toFixed(1)}%`;
    return item;
  }));
}

function renderTimings(list, result) {
  const t = result.timings;
  const rows = [["decode", `${t.decode_ms.toFixed(2)} ms`], ["queue", `${t.queue_ms.toFixed(2)} ms`],
    ["compute", `${t.compute_ms.toFixed(2)} ms`], ["batch size", t.batch_size],
    ["provider", result.model.parameters.provider],
    ["round trip", `${result.ms.toFixed(1)} ms, ${result.requests} request${result.requests > 1 ? "s" : ""}`],
    ["received", megabytes(result.receivedBytes)]];
  list.replaceChildren(...rows.flatMap(([term, value]) => {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = term;
    dd.textContent = value;
    return [dt, dd];
  }));
}

function renderSkippedTap(item, tap) {
  $(".tap-name", item).textContent = tap.name;
  $(".tap-shape", item).textContent = tap.shape.join(" × ");
  $(".tap-range", item).textContent = "not fetched: over the server's message limit";
  $(".tap-figure", item).remove();
}

function renderTap(item, model, name, tensor) {
  const shape = tensor.shape.slice(1);
  const width = $(".tap-figure", item).clientWidth;
  const canvas = $(".tap-canvas", item);
  item.dataset.tap = name;
  $(".tap-name", item).textContent = name;
  $(".tap-shape", item).textContent = shape.length === 3
    ? `${shape[0]} channels × ${shape[1]} × ${shape[2]}` : `vector of ${shape[0]}`;
  if (shape.length === 3) renderFeatureMap(item, canvas, model, name, tensor, width);
  else renderVector(item, canvas, name, tensor, width);
}

function renderFeatureMap(item, canvas, model, name, tensor, width) {
  const stats = featureStats(tensor);
  const shared = document.querySelector("input[name=scale]:checked").value === "shared";
  const layout = drawFeatureGrid(canvas, tensor, stats, { shared, width });
  const dead = stats.dead.length;
  $(".tap-range", item).innerHTML = `min ${short(stats.all.min)}, max ${short(stats.all.max)}`
    + (dead ? ` · <span class="dead">${dead} dead channel${dead > 1 ? "s" : ""}</span>` : " · no dead channel");
  canvas.setAttribute("aria-label", `${name}: ${stats.channels} channels of ${stats.height} × ${stats.width}, `
    + `min ${short(stats.all.min)}, max ${short(stats.all.max)}, ${dead} dead`);
  const map = { model, name, tensor, stats, shared };
  const cursor = $(".cursor", item);
  const readout = $(".tap-readout", item);
  let selected = 0;
  const select = (channel) => {
    selected = channel;
    const { x, y } = layout.origin(channel);
    Object.assign(cursor.style, { left: `${x - 2}px`, top: `${y - 2}px`, width: `${layout.tile + 4}px`,
                                  height: `${layout.tile + 4}px` });
    cursor.hidden = false;
    readout.textContent = channelText(stats, channel);
  };
  canvas.addEventListener("click", (event) => {
    const channel = layout.channelAt(event.offsetX, event.offsetY);
    if (channel === null) return;
    select(channel);
    openChannel(map, channel);
  });
  canvas.addEventListener("focus", () => select(selected));
  canvas.addEventListener("blur", () => { cursor.hidden = true; });
  canvas.addEventListener("keydown", (event) => {
    const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -layout.columns, ArrowDown: layout.columns }[event.key];
    if (step !== undefined) {
      event.preventDefault();
      select(Math.max(0, Math.min(stats.channels - 1, selected + step)));
    } else if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      openChannel(map, selected);
    }
  });
}

function channelText(stats, channel) {
  const { min, max } = stats.perChannel[channel];
  return `channel ${channel}: min ${short(min)}, max ${short(max)}${min === max ? " (dead: every value the same)" : ""}`;
}

function renderVector(item, canvas, name, tensor, width) {
  const values = tensor.data;
  const { min, max } = range(values);
  const zeros = values.filter((v) => v === 0).length;
  const unitAt = drawVector(canvas, values, { width });
  $(".tap-range", item).textContent = `min ${short(min)}, max ${short(max)} · ${zeros} of ${values.length} exactly zero`;
  canvas.setAttribute("aria-label", `${name}: ${values.length} values as bars, min ${short(min)}, max ${short(max)}`);
  const readout = $(".tap-readout", item);
  let selected = 0;
  const show = (unit) => {
    selected = unit;
    readout.textContent = `unit ${unit}: ${short(values[unit])}`;
  };
  canvas.addEventListener("mousemove", (event) => show(unitAt(event.offsetX)));
  canvas.addEventListener("keydown", (event) => {
    const step = { ArrowLeft: -1, ArrowRight: 1 }[event.key];
    if (step === undefined) return;
    event.preventDefault();
    show(Math.max(0, Math.min(values.length - 1, selected + step)));
  });
}

// ---- one channel, large ----

let openMap = null;

function openChannel(map, channel) {
  openMap = { ...map, channel };
  const dialog = $("#channel-dialog");
  const { stats } = map;
  $("#channel-title").textContent = `${map.model.name} · ${map.name} · channel ${channel} (of 0 … ${stats.channels - 1})`;
  const side = Math.min(336, window.innerWidth - 64);
  const canvas = $("#channel-canvas");
  drawChannel(canvas, map.tensor, stats, channel, { shared: map.shared, side });
  canvas.setAttribute("aria-label", `Channel ${channel} of ${map.name}, ${stats.height} × ${stats.width}, enlarged`);
  $("#channel-range").textContent = `${channelText(stats, channel)}; colour scale: `
    + (map.shared ? `shared, ${short(stats.all.min)} … ${short(stats.all.max)}` : "this channel's own min … max");
  if (!dialog.open) dialog.showModal();
}

function stepChannel(step) {
  if (!openMap) return;
  const channels = openMap.stats.channels;
  openChannel(openMap, (openMap.channel + step + channels) % channels);
}

// ---- controls ----

function wireControls() {
  $("#model-a").addEventListener("change", () => { showModelInfo(); classify(); });
  $("#model-b").addEventListener("change", () => { showModelInfo(); classify(); });
  $("#precision").addEventListener("change", () => { showModelInfo(); classify(); });
  document.querySelectorAll("input[name=scale]").forEach((radio) => radio.addEventListener("change", () => {
    if (state.results.length) renderResults();
  }));
  $("#file").addEventListener("change", (event) => useFile(event.target.files[0], event.timeStamp));
  const dropzone = $("#dropzone");
  dropzone.addEventListener("dragover", (event) => {
    event.preventDefault();
    dropzone.classList.add("dragging");
  });
  dropzone.addEventListener("dragleave", () => dropzone.classList.remove("dragging"));
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropzone.classList.remove("dragging");
    useFile(event.dataTransfer.files[0], event.timeStamp);
  });
  $("#pad-clear").addEventListener("click", () => pad.clear());
  $("#pad-classify").addEventListener("click", async (event) => {
    if (pad.empty) return say("Draw something first.");
    const png = pad.toPng();
    setImage({ name: `drawing (${PAD_SIDE} × ${PAD_SIDE})`, bytes: await png.arrayBuffer(), url: URL.createObjectURL(png) },
      event.timeStamp);
  });
  $("#pad-edit").addEventListener("click", () => {
    const input = state.results[0]?.tensors.image;
    if (input && input.shape.at(-1) === PAD_SIDE) pad.load(input.data);
  });
  $("#channel-prev").addEventListener("click", () => stepChannel(-1));
  $("#channel-next").addEventListener("click", () => stepChannel(1));
  $("#channel-close").addEventListener("click", () => $("#channel-dialog").close());
  $("#channel-dialog").addEventListener("keydown", (event) => {
    const step = { ArrowLeft: -1, ArrowRight: 1 }[event.key];
    if (step) stepChannel(step);
  });
  $("#token").value = sessionStorage.getItem("cnnserve-token") ?? "";
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    api.setToken($("#token").value.trim());
    location.reload();
  });
  // Redraw the grids for a new width only: phones resize the window's height as the address bar slides.
  let resizeTimer;
  let drawnWidth = $("#results").clientWidth;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      if (!state.results.length || $("#results").clientWidth === drawnWidth) return;
      drawnWidth = $("#results").clientWidth;
      renderResults();
    }, 200);
  });
}

async function useFile(file, clicked) {
  if (!file) return;
  setImage({ name: file.name, bytes: await file.arrayBuffer(), url: URL.createObjectURL(file) }, clicked);
}

// ---- status, errors and the call log ----

function say(text) {
  $("#status").textContent = text;
}

function showError(error) {
  const box = $("#error");
  box.hidden = false;
  box.textContent = error.status === 401
    ? "This server wants a bearer token: enter it under “Server access” below."
    : `The server said: ${error.message}`;
  if (error.status === 401) $("#access").open = true;
  say("");
}

function hideError() {
  $("#error").hidden = true;
}

function logCall(call) {
  const item = document.createElement("li");
  item.textContent = `${call.method} ${call.path} → ${call.status} · ${call.ms.toFixed(1)} ms · `
    + `sent ${megabytes(call.sentBytes)} · received ${megabytes(call.receivedBytes)}`;
  const log = $("#call-log");
  log.prepend(item);
  while (log.children.length > 30) log.lastElementChild.remove();
  $("#call-count").textContent = Number($("#call-count").textContent) + 1;
  if (call.requestHeader) $("#last-request").textContent = JSON.stringify(call.requestHeader, null, 2);
}
