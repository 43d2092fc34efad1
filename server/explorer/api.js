// Every request the page makes to the server, and nothing else: KServe v2 (Open Inference Protocol)
// over HTTP, plus cnnserve's HTTP-only extensions (README, "Feature-map explorer"):
//   - input `image_encoded` (BYTES): a PNG/JPEG file as it is; the server fits it to the model's input;
//   - output `image` (UINT8): the pixels the model received, after that fitting;
//   - output parameter `datatype: "FP16"`: a feature map in half the bytes;
//   - response `parameters`: decode_ms, queue_ms, compute_ms, batch_size;
//   - model metadata `parameters`: provider, trained, test_acc, max_response_bytes.
// Binary tensors use the protocol's binary-data extension: a JSON header of
// `Inference-Header-Content-Length` bytes, then the raw bytes of each tensor, in order.

const HEADER_LENGTH = "Inference-Header-Content-Length";
const TOKEN_KEY = "cnnserve-token";
const callListeners = [];

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** A bearer token for servers started with --auth-token-file; kept for this browser tab only. */
export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** `listener({method, path, status, ms, sentBytes, receivedBytes, requestHeader})` after every call. */
export function onCall(listener) {
  callListeners.push(listener);
}

async function call(method, path, { body, headers = {}, requestHeader } = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const started = performance.now();
  const response = await fetch(path, {
    method, body, headers: { ...headers, ...(token ? { Authorization: `Bearer ${token}` } : {}) },
  });
  const bytes = await response.arrayBuffer();
  const record = {
    method, path, status: response.status, ms: performance.now() - started,
    sentBytes: body ? (body.byteLength ?? body.length) : 0, receivedBytes: bytes.byteLength, requestHeader,
  };
  callListeners.forEach((listener) => listener(record));
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try {
      message = JSON.parse(new TextDecoder().decode(bytes)).error ?? message;
    } catch { /* not JSON: keep the status */ }
    throw new ApiError(response.status, message);
  }
  return { response, bytes };
}

async function getJson(path) {
  const { bytes } = await call("GET", path);
  return JSON.parse(new TextDecoder().decode(bytes));
}

/** [{name, version, state: "READY" | "UNAVAILABLE", reason}] */
export async function listModels() {
  const { bytes } = await call("POST", "/v2/repository/index", {
    body: "{}", headers: { "Content-Type": "application/json" },
  });
  return JSON.parse(new TextDecoder().decode(bytes));
}

/** {name, versions, inputs, outputs: [{name, datatype, shape}], parameters} */
export function modelMetadata(name) {
  return getJson(`/v2/models/${encodeURIComponent(name)}`);
}

/** The sample images the server offers (file names under /examples/). */
export async function exampleNames() {
  return (await getJson("/examples/")).examples;
}

/**
 * One image file through one model.
 * file: ArrayBuffer of a PNG or JPEG; taps: feature-map names; half: FP16 feature maps; classes: how many
 * classes to rank. Returns {tensors: {name: {shape, datatype, data}}, parameters, ms, receivedBytes}.
 */
export async function infer(model, file, { taps = [], half = true, classes = 10, withInput = true } = {}) {
  const header = {
    inputs: [{ name: "image_encoded", datatype: "BYTES", shape: [1],
               parameters: { binary_data_size: 4 + file.byteLength } }],
    outputs: [
      { name: "logits", parameters: { classification: classes } },   // "logit:index:label", best first
      ...(withInput ? [{ name: "image", parameters: { binary_data: true } }] : []),
      ...taps.map((name) => ({ name, parameters: { binary_data: true, datatype: half ? "FP16" : "FP32" } })),
    ],
  };
  const json = new TextEncoder().encode(JSON.stringify(header));
  const length = new Uint8Array(4);
  new DataView(length.buffer).setUint32(0, file.byteLength, true);   // a BYTES element: length, then bytes
  const body = new Uint8Array(json.byteLength + 4 + file.byteLength);
  body.set(json, 0);
  body.set(length, json.byteLength);
  body.set(new Uint8Array(file), json.byteLength + 4);
  const started = performance.now();
  const { response, bytes } = await call("POST", `/v2/models/${encodeURIComponent(model)}/infer`, {
    body, requestHeader: header,
    headers: { "Content-Type": "application/octet-stream", [HEADER_LENGTH]: String(json.byteLength) },
  });
  return { ...parseInferResponse(response, bytes), ms: performance.now() - started, receivedBytes: bytes.byteLength };
}

/** The JSON header, then each binary tensor's bytes in the order of `outputs`. */
export function parseInferResponse(response, bytes) {
  const headerLength = response.headers.get(HEADER_LENGTH);
  const jsonEnd = headerLength === null ? bytes.byteLength : Number(headerLength);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(bytes, 0, jsonEnd)));
  const tensors = {};
  let offset = jsonEnd;
  for (const output of header.outputs) {
    const size = output.parameters?.binary_data_size;
    let data = output.data;
    if (size !== undefined) {
      data = typedArray(output.datatype, bytes.slice(offset, offset + size));
      offset += size;
    }
    tensors[output.name] = { shape: output.shape, datatype: output.datatype, data };
  }
  return { tensors, parameters: header.parameters ?? {} };
}

// The protocol's binary tensors are little-endian, as every browser platform is.
function typedArray(datatype, buffer) {
  if (datatype === "FP32") return new Float32Array(buffer);
  if (datatype === "FP16") return halfToFloat(new Uint16Array(buffer));
  if (datatype === "UINT8") return new Uint8Array(buffer);
  throw new Error(`the page does not read ${datatype} binary tensors`);
}

let halfTable = null;

/** float16 bit patterns to numbers, through a table of all 65,536 (built once). */
function halfToFloat(bits) {
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const sign = h & 0x8000 ? -1 : 1;
      const exponent = (h >> 10) & 0x1f;
      const fraction = h & 0x3ff;
      halfTable[h] = exponent === 0 ? sign * 2 ** -14 * (fraction / 1024)
        : exponent === 31 ? (fraction ? NaN : sign * Infinity)
          : sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
    }
  }
  const values = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) values[i] = halfTable[bits[i]];
  return values;
}

/** Classification strings "logit:index:label" (best first) to [{index, label, logit, probability}]. */
export function rankedClasses(strings) {
  const ranked = strings.map((text) => {
    const [logit, index] = text.split(":", 2);
    return { logit: Number(logit), index: Number(index), label: text.slice(logit.length + index.length + 2) };
  });
  const top = Math.max(...ranked.map((c) => c.logit));
  const total = ranked.reduce((sum, c) => sum + Math.exp(c.logit - top), 0);
  ranked.forEach((c) => { c.probability = Math.exp(c.logit - top) / total; });
  return ranked;
}
