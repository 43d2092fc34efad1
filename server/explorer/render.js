// Drawing on <canvas>: feature maps as grids of channels, vectors as bar strips, and the input image.
// Pure drawing: these functions get numbers and a canvas, never talk to the server.

// Viridis (matplotlib's perceptually uniform colour map), 9 stops, interpolated to 256 colours:
// dark blue = the scale's minimum, yellow = its maximum.
const VIRIDIS_STOPS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
export const COLORMAP = (() => {
  const table = new Uint8Array(256 * 3);
  for (let i = 0; i < 256; i++) {
    const position = (i / 255) * (VIRIDIS_STOPS.length - 1);
    const low = Math.floor(position);
    const high = Math.min(low + 1, VIRIDIS_STOPS.length - 1);
    const t = position - low;
    for (let c = 0; c < 3; c++) table[i * 3 + c] = Math.round(VIRIDIS_STOPS[low][c] * (1 - t) + VIRIDIS_STOPS[high][c] * t);
  }
  return table;
})();
// The same colours as whole RGBA pixels (little-endian: alpha in the high byte), to fill ImageData fast.
const COLORMAP_RGBA = Uint32Array.from({ length: 256 }, (_, i) =>
  (255 << 24 | COLORMAP[i * 3 + 2] << 16 | COLORMAP[i * 3 + 1] << 8 | COLORMAP[i * 3]) >>> 0);

const DEAD_COLOUR = "#d0021b";
const LABEL_HEIGHT = 12;   // CSS pixels above each tile for its channel number
const GAP = 4;

/** min and max of values[start, start + length), skipping NaN. */
export function range(values, start = 0, length = values.length) {
  let min = Infinity;
  let max = -Infinity;
  for (let i = start; i < start + length; i++) {
    const v = values[i];
    if (v < min) min = v;
    if (v > max) max = v;
  }
  return { min, max };
}

/**
 * The statistics of a feature map [C, H, W]: per channel min/max, the whole map's min/max, and the dead
 * channels: those whose every value is the same (after a ReLU: all zero), which carry no information.
 */
export function featureStats(tensor) {
  const [channels, height, width] = tensor.shape.slice(1);
  const size = height * width;
  const perChannel = [];
  for (let c = 0; c < channels; c++) perChannel.push(range(tensor.data, c * size, size));
  const all = { min: Math.min(...perChannel.map((r) => r.min)), max: Math.max(...perChannel.map((r) => r.max)) };
  const dead = perChannel.flatMap((r, c) => (r.max === r.min ? [c] : []));
  return { channels, height, width, perChannel, all, dead };
}

/** Tile side in CSS pixels: whole multiples of the map's side, smaller when there are many channels. */
function tileSide(stats) {
  const target = stats.channels > 256 ? 24 : stats.channels > 64 ? 36 : 48;
  return Math.max(1, Math.round(target / stats.height)) * stats.height;
}

/** Where each channel goes in a grid `width` CSS pixels wide. */
export function gridLayout(stats, width) {
  const tile = tileSide(stats);
  const columns = Math.max(1, Math.floor((width + GAP) / (tile + GAP)));
  const rows = Math.ceil(stats.channels / columns);
  const cell = { width: tile + GAP, height: tile + LABEL_HEIGHT + GAP };
  return {
    tile, columns, rows, cell,
    width: Math.min(columns, stats.channels) * cell.width - GAP,
    height: rows * cell.height - GAP,
    origin: (c) => ({ x: (c % columns) * cell.width, y: Math.floor(c / columns) * cell.height + LABEL_HEIGHT }),
    channelAt(x, y) {
      const column = Math.floor(x / cell.width);
      const row = Math.floor(y / cell.height);
      const c = row * columns + column;
      return column < columns && c < stats.channels ? c : null;
    },
  };
}

/** A canvas `width` × `height` CSS pixels, sharp on high-density screens; returns its 2D context. */
function sized(canvas, width, height) {
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.imageSmoothingEnabled = false;
  return context;
}

/** One channel's values into `image` (its size) through the colour map, scaled from [min, max]. */
function paintChannel(image, values, offset, min, max) {
  const pixels = new Uint32Array(image.data.buffer);
  const scale = 255 / (max - min || 1);
  for (let i = 0; i < pixels.length; i++) {
    pixels[i] = COLORMAP_RGBA[Math.max(0, Math.min(255, Math.round((values[offset + i] - min) * scale)))];
  }
  return image;
}

/**
 * A feature map [1, C, H, W] as a grid of channels with their numbers. `shared`: one colour scale for
 * the whole map (channels compare with each other); else each channel spans the whole colour map.
 * Dead channels are crossed out in red. Returns the layout, for finding the channel under a click.
 */
export function drawFeatureGrid(canvas, tensor, stats, { shared, width }) {
  const layout = gridLayout(stats, width);
  const context = sized(canvas, layout.width, layout.height);
  const scratch = new OffscreenCanvas(stats.width, stats.height);
  const scratchContext = scratch.getContext("2d");
  const image = new ImageData(stats.width, stats.height);
  context.font = "10px system-ui, sans-serif";
  context.textBaseline = "bottom";
  const dead = new Set(stats.dead);
  for (let c = 0; c < stats.channels; c++) {
    const { min, max } = shared ? stats.all : stats.perChannel[c];
    const { x, y } = layout.origin(c);
    scratchContext.putImageData(paintChannel(image, tensor.data, c * stats.height * stats.width, min, max), 0, 0);
    context.drawImage(scratch, x, y, layout.tile, layout.tile);
    context.fillStyle = dead.has(c) ? DEAD_COLOUR : "#444";
    context.fillText(String(c), x, y - 1);
    if (dead.has(c)) crossOut(context, x, y, layout.tile);
  }
  return layout;
}

function crossOut(context, x, y, side) {
  context.strokeStyle = DEAD_COLOUR;
  context.lineWidth = 2;
  context.strokeRect(x + 1, y + 1, side - 2, side - 2);
  context.beginPath();
  context.moveTo(x + 2, y + 2);
  context.lineTo(x + side - 2, y + side - 2);
  context.moveTo(x + side - 2, y + 2);
  context.lineTo(x + 2, y + side - 2);
  context.stroke();
}

/** One channel, large, on its own colour scale or the shared one. */
export function drawChannel(canvas, tensor, stats, channel, { shared, side }) {
  const context = sized(canvas, side, side);
  const { min, max } = shared ? stats.all : stats.perChannel[channel];
  const scratch = new OffscreenCanvas(stats.width, stats.height);
  const image = new ImageData(stats.width, stats.height);
  scratch.getContext("2d").putImageData(paintChannel(image, tensor.data, channel * stats.height * stats.width, min, max),
    0, 0);
  context.drawImage(scratch, 0, 0, side, side);
}

/**
 * A vector [1, D] (fc1, gap, …) as a strip of D bars from a zero line, coloured by value.
 * Returns a function from an x position to the element under it, for the hover readout.
 */
export function drawVector(canvas, values, { width, height = 64 }) {
  const context = sized(canvas, width, height);
  const { min, max } = range(values);
  const low = Math.min(0, min);
  const high = Math.max(0, max);
  const span = high - low || 1;
  const zero = height - ((0 - low) / span) * height;
  const bar = width / values.length;
  for (let i = 0; i < values.length; i++) {
    const level = Math.round(((values[i] - min) / (max - min || 1)) * 255);
    context.fillStyle = `rgb(${COLORMAP[level * 3]}, ${COLORMAP[level * 3 + 1]}, ${COLORMAP[level * 3 + 2]})`;
    const top = height - ((values[i] - low) / span) * height;
    context.fillRect(i * bar, Math.min(top, zero), Math.max(bar - (bar > 3 ? 1 : 0), 0.5), Math.max(Math.abs(zero - top), 1));
  }
  context.fillStyle = "#888";
  context.fillRect(0, zero, width, 1);
  return (x) => Math.min(values.length - 1, Math.max(0, Math.floor(x / bar)));
}

/** The model's input: uint8 grey levels [1, 1, H, W], drawn `side` CSS pixels wide. */
export function drawGray(canvas, pixels, height, width, side) {
  const context = sized(canvas, side, side);
  const image = new ImageData(width, height);
  for (let i = 0; i < width * height; i++) {
    image.data.fill(pixels[i], i * 4, i * 4 + 3);
    image.data[i * 4 + 3] = 255;
  }
  const scratch = new OffscreenCanvas(width, height);
  scratch.getContext("2d").putImageData(image, 0, 0);
  context.drawImage(scratch, 0, 0, side, side);
}

/** The colour map as a horizontal bar, for the legend. */
export function drawColorbar(canvas, width, height = 10) {
  const context = sized(canvas, width, height);
  for (let x = 0; x < width; x++) {
    const level = Math.round((x / Math.max(width - 1, 1)) * 255);
    context.fillStyle = `rgb(${COLORMAP[level * 3]}, ${COLORMAP[level * 3 + 1]}, ${COLORMAP[level * 3 + 2]})`;
    context.fillRect(x, 0, 1, height);
  }
}

/** A number short enough for a label: 3 significant digits. */
export function short(value) {
  if (!Number.isFinite(value)) return String(value);
  if (value === 0) return "0";
  return Math.abs(value) >= 1000 || Math.abs(value) < 0.01 ? value.toExponential(2) : value.toPrecision(3);
}
