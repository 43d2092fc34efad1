// A 28×28 canvas to draw a garment on with the mouse, a pen or a finger: light strokes on black, as
// Fashion-MNIST images are. Its PNG is exactly 28×28, so the server takes it as it is (no fitting).

export const PAD_SIDE = 28;
const BRUSH = 2.2;   // in pad pixels; the canvas smooths the edges into grey levels

export function createDrawPad(canvas) {
  canvas.width = PAD_SIDE;
  canvas.height = PAD_SIDE;
  const context = canvas.getContext("2d");
  let last = null;
  let strokes = 0;

  function clear() {
    context.fillStyle = "#000";
    context.fillRect(0, 0, PAD_SIDE, PAD_SIDE);
    strokes = 0;
  }

  /** The pointer's position in pad pixels (the canvas is shown larger than 28 CSS pixels). */
  function padPoint(event) {
    const box = canvas.getBoundingClientRect();
    return { x: ((event.clientX - box.left) / box.width) * PAD_SIDE, y: ((event.clientY - box.top) / box.height) * PAD_SIDE };
  }

  function strokeTo(point) {
    context.strokeStyle = "#fff";
    context.lineWidth = BRUSH;
    context.lineCap = "round";
    context.lineJoin = "round";
    context.beginPath();
    context.moveTo(last.x, last.y);
    context.lineTo(point.x, point.y);
    context.stroke();
    last = point;
  }

  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    last = padPoint(event);
    strokeTo({ x: last.x + 0.01, y: last.y });   // a click leaves a dot
    strokes++;
  });
  canvas.addEventListener("pointermove", (event) => {
    if (last) strokeTo(padPoint(event));
  });
  for (const type of ["pointerup", "pointercancel"]) {
    canvas.addEventListener(type, () => { last = null; });
  }

  /** Start from given grey levels (the model's last input), to change it by hand. */
  function load(pixels) {
    const image = new ImageData(PAD_SIDE, PAD_SIDE);
    for (let i = 0; i < PAD_SIDE * PAD_SIDE; i++) {
      image.data.fill(pixels[i], i * 4, i * 4 + 3);
      image.data[i * 4 + 3] = 255;
    }
    context.putImageData(image, 0, 0);
    strokes++;
  }

  clear();
  return {
    clear, load,
    get empty() { return strokes === 0; },
    /** The drawing as a 28×28 PNG file. (toDataURL, not toBlob: Chromium may put off toBlob's encoding
        to an idle moment, up to a second later.) */
    toPng() {
      const base64 = canvas.toDataURL("image/png").split(",")[1];
      return new Blob([Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))], { type: "image/png" });
    },
  };
}
