// ganq app: generate with a ganq .onnx file in the browser (onnxruntime-web, WebAssembly backend).
// window.ganq exposes ready (a promise), generate(z, n) (the first latent; other inputs drawn from seed 0, a label
// 0), runFeeds(feeds, n) (every input given: {name: {type, dims, data}}) and the timings, for tests and the curious.

const $ = (id) => document.getElementById(id);

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// every input the spec declares (a one-latent spec lists none: its latent)
function inputsOf(spec) {
  return spec.inputs && spec.inputs.length ? spec.inputs
    : [{ name: spec.input_name, kind: "latent", shape: [spec.latent_dim], prior: spec.latent }];
}
const size = (shape) => shape.reduce((a, b) => a * b, 1);
function gauss(rand) {
  const u = Math.max(rand(), 1e-12), v = rand();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

// n latents from the spec's prior (normal: Box-Muller; uniform: [-1, 1); truncated: normal redrawn beyond
// +-truncation), seeded: the same seed, the same images
function latentsOf(inp, n, seed) {
  const rand = mulberry32(seed), z = new Float32Array(n * size(inp.shape));
  const t = inp.truncation ?? 2.0;
  for (let i = 0; i < z.length; i++) {
    if (inp.prior === "uniform") { z[i] = rand() * 2 - 1; continue; }
    let v = gauss(rand);
    while (inp.prior === "truncated" && Math.abs(v) > t) v = gauss(rand);
    z[i] = v;
  }
  return z;
}
function latents(spec, n, seed) {
  const lat = inputsOf(spec).find((i) => i.kind === "latent");
  return lat ? latentsOf(lat, n, seed) : new Float32Array(0);
}

// the feeds of n calls: ctl.label (a class, or -1: drawn), ctl.images (Float32Arrays of one input image each, in
// the input's layout and range; cycled), ctl.z (the first latent's values, e.g. an interpolation)
function feedsOf(spec, n, seed, ctl = {}) {
  const feeds = {};
  let first = true;
  inputsOf(spec).forEach((inp, k) => {
    const rand = mulberry32(seed * 7919 + k + 1);
    if (inp.kind === "latent") {
      const z = first && ctl.z ? ctl.z : latentsOf(inp, n, first ? seed : seed * 7919 + k + 1);
      feeds[inp.name] = { type: "float32", data: z, dims: [n, ...inp.shape] };
      first = false;
    } else if (inp.kind === "label") {
      const v = Array.from({ length: n }, () => (ctl.label ?? -1) >= 0 ? ctl.label : Math.floor(rand() * inp.classes));
      feeds[inp.name] = inp.dtype === "int32" ? { type: "int32", data: Int32Array.from(v), dims: [n] }
        : { type: "int64", data: BigInt64Array.from(v.map(BigInt)), dims: [n] };
    } else if (inp.kind === "noise") {
      const x = new Float32Array(n * size(inp.shape));
      for (let i = 0; i < x.length; i++) x[i] = gauss(rand);
      feeds[inp.name] = { type: "float32", data: x, dims: [n, ...inp.shape] };
    } else if (inp.kind === "image") {
      const m = size(inp.shape), x = new Float32Array(n * m), [lo, hi] = inp.range ?? [-1, 1];
      for (let j = 0; j < n; j++) {
        const img = ctl.images && ctl.images.length ? ctl.images[j % ctl.images.length] : null;
        for (let i = 0; i < m; i++) x[j * m + i] = img ? img[i] : lo + (hi - lo) * rand();
      }
      feeds[inp.name] = { type: "float32", data: x, dims: [n, ...inp.shape] };
    } else {
      const v = inp.value;
      feeds[inp.name] = inp.dtype === "int64" ? { type: "int64", data: BigInt64Array.from(v.map(BigInt)), dims: inp.shape }
        : { type: "float32", data: Float32Array.from(v), dims: inp.shape };
    }
  });
  return feeds;
}

// an image input from pixels (RGBA, w x h, as a canvas gives them) in the input's layout and range
function imageInput(inp, rgba) {
  const nchw = (inp.layout ?? "NCHW") === "NCHW";
  const [c, h, w] = nchw ? inp.shape : [inp.shape[2], inp.shape[0], inp.shape[1]];
  const [lo, hi] = inp.range ?? [-1, 1], x = new Float32Array(c * h * w);
  for (let y = 0; y < h; y++) for (let xx = 0; xx < w; xx++) {
    const p = (y * w + xx) * 4;
    const px = c === 1 ? [0.299 * rgba[p] + 0.587 * rgba[p + 1] + 0.114 * rgba[p + 2]] : [rgba[p], rgba[p + 1], rgba[p + 2]];
    for (let ch = 0; ch < c; ch++) {
      const i = nchw ? (ch * h + y) * w + xx : (y * w + xx) * c + ch;
      x[i] = lo + (hi - lo) * px[ch] / 255;
    }
  }
  return x;
}

function draw(canvas, data, spec, n, cols, scale) {
  const [c, h, w] = [spec.channels, spec.height, spec.width];
  const [lo, hi] = spec.output_range;
  const nhwc = spec.output_layout === "NHWC";
  const rows = Math.ceil(n / cols);
  canvas.width = cols * w; canvas.height = rows * h;
  canvas.style.width = `${cols * w * scale}px`; canvas.style.height = `${rows * h * scale}px`;
  const ctx = canvas.getContext("2d"), img = ctx.createImageData(cols * w, rows * h);
  for (let k = 0; k < n; k++) {
    const ox = (k % cols) * w, oy = Math.floor(k / cols) * h;
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
      const p = ((oy + y) * cols * w + ox + x) * 4;
      for (let ch = 0; ch < 3; ch++) {
        const cc = c === 1 ? 0 : ch;
        const v = nhwc ? data[((k * h + y) * w + x) * c + cc] : data[((k * c + cc) * h + y) * w + x];
        img.data[p + ch] = Math.max(0, Math.min(255, Math.round((v - lo) / (hi - lo) * 255)));
      }
      img.data[p + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
}

async function pixels(src, w, h) {  // an image (URL or File) drawn at w x h: its RGBA bytes
  const bmp = await createImageBitmap(src instanceof Blob ? src : await (await fetch(src)).blob());
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  const ctx = c.getContext("2d");
  ctx.drawImage(bmp, 0, 0, w, h);
  return ctx.getImageData(0, 0, w, h).data;
}

const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main() {
  const t0 = performance.now();
  const cfg = await (await fetch("app.json")).json();
  const spec = cfg.spec;
  const ort = await import(new URL(cfg.ort.module, location.href).href);
  ort.env.wasm.wasmPaths = new URL(cfg.ort.wasmPaths, location.href).href;  // relative to the page, not the module
  const isolated = self.crossOriginIsolated === true;
  ort.env.wasm.numThreads = isolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  // a packed file decoded once (ganq.app.page): its bit planes unpacked here into the uint8 codes that the page
  // form's DequantizeLinear nodes read as external data; the session then folds every decoder once
  let externalData;
  if (cfg.unpack) {
    const planes = new Uint8Array(await (await fetch(cfg.unpack.planes)).arrayBuffer());
    const codes = new Uint8Array(cfg.unpack.codes_bytes);
    for (const t of cfg.unpack.tensors) {
      const out = codes.subarray(t.codes_offset, t.codes_offset + t.n);
      for (let i = 0; i < t.bits; i++) {
        const plane = planes.subarray(t.planes_offset + i * t.plane_bytes, t.planes_offset + (i + 1) * t.plane_bytes);
        for (let j = 0, e = 0; j < plane.length; j++) {
          const byte = plane[j];
          if (byte === 0) { e += 8; continue; }
          for (let b = 7; b >= 0 && e < t.n; b--, e++) out[e] |= ((byte >> b) & 1) << i;  // MSB first
        }
      }
    }
    externalData = [{ path: cfg.unpack.codes, data: codes }];
  }
  const session = await ort.InferenceSession.create(cfg.model, {
    executionProviders: ["wasm"],
    ...(externalData ? { externalData } : {}),
    // as ganq's Python runtime: never swap DequantizeLinear -> MatMul for MatMulNBits with 8-bit activations, and
    // (decode "once", the default) fold the weights' DequantizeLinear into float weights when the session is made;
    // "integer" (a file with quantized activations) keeps the QDQ fusions on: the integer kernels
    extra: { session: { qdq_matmulnbits_accuracy_level: "0",
                        ...(cfg.decode === "once" ? { disable_quant_qdq: "1" } : {}) } },
  });
  const tLoad = performance.now() - t0;

  const inputs = inputsOf(spec), lat = inputs.find((i) => i.kind === "latent");
  const label = inputs.find((i) => i.kind === "label"), image = inputs.find((i) => i.kind === "image");
  const fixed = cfg.fixed_batch || 0;  // a graph that bakes its batch in runs in batches of that size

  // feeds: {name: {type, data, dims}} for n calls -> the output's data (n images)
  async function runFeeds(feeds, n) {
    const step = fixed || n, per = spec.channels * spec.height * spec.width, out = new Float32Array(n * per);
    for (let i = 0; i < n; i += step) {
      const m = Math.min(step, n - i), part = {};
      for (const [name, f] of Object.entries(feeds)) {
        if (f.dims.length && f.dims[0] === n && inputs.find((x) => x.name === name)?.kind !== "const") {
          const row = f.data.length / n, data = new f.data.constructor(step * row);
          for (let j = 0; j < step; j++) data.set(f.data.subarray((i + Math.min(j, m - 1)) * row, (i + Math.min(j, m - 1) + 1) * row), j * row);
          part[name] = new ort.Tensor(f.type, data, [step, ...f.dims.slice(1)]);
        } else part[name] = new ort.Tensor(f.type, f.data, f.dims);
      }
      const res = await session.run(part);
      out.set(res[spec.output_name].data.subarray(0, m * per), i * per);
    }
    return out;
  }
  const generate = (z, n) => runFeeds(feedsOf(spec, n, 0, { z: Float32Array.from(z), label: 0 }), n);
  const fromJSON = (feeds, n) => runFeeds(Object.fromEntries(Object.entries(feeds).map(([k, f]) => [k, {
    type: f.type, dims: f.dims, data: f.type === "int64" ? BigInt64Array.from(f.data.map(BigInt))
      : f.type === "int32" ? Int32Array.from(f.data) : Float32Array.from(f.data) }])), n);

  let t = performance.now();
  await runFeeds(feedsOf(spec, 1, 0), 1);
  const tFirst = performance.now() - t;
  const per = async (n, reps) => {
    const feeds = feedsOf(spec, n, 1), times = [];
    for (let r = 0; r < reps; r++) { t = performance.now(); await runFeeds(feeds, n); times.push(performance.now() - t); }
    return median(times) / n;
  };
  const timings = { load_ms: tLoad, first_image_ms: tFirst, per_image_ms_batch1: await per(1, 9),
                    per_image_ms_batch16: await per(16, 5), threads: ort.env.wasm.numThreads,
                    cross_origin_isolated: isolated, page_ms: performance.now() };

  const scale = spec.height <= 32 ? 3 : 1;
  let samples = [];  // input images of an image-to-image generator: the page's samples, then an upload
  if (image) {
    const nchw = (image.layout ?? "NCHW") === "NCHW";
    const [h, w] = nchw ? image.shape.slice(1) : image.shape.slice(0, 2);
    if (cfg.samples) {
      const strip = await pixels(cfg.samples, w * cfg.samples_n, h);
      for (let k = 0; k < cfg.samples_n; k++) {
        const one = new Uint8ClampedArray(w * h * 4);
        for (let y = 0; y < h; y++) one.set(strip.subarray((y * w * cfg.samples_n + k * w) * 4, (y * w * cfg.samples_n + (k + 1) * w) * 4), y * w * 4);
        samples.push(imageInput(image, one));
      }
    }
    $("upload-row").hidden = false;
    $("upload").onchange = async () => {
      const f = $("upload").files[0];
      if (f) { samples = [imageInput(image, await pixels(f, w, h)), ...samples]; await show(); }
    };
  }
  if (label) {
    $("label-row").hidden = false;
    const names = cfg.class_names || [];
    $("label").innerHTML = `<option value="-1">random</option>` + Array.from({ length: label.classes },
      (_, c) => `<option value="${c}">${c}${names[c] ? ": " + names[c] : ""}</option>`).join("");
    $("label").onchange = () => show();
  }
  async function show() {
    const seed = Math.max(0, Math.floor(Number($("seed").value) || 0));
    const ctl = { label: label ? Number($("label").value) : -1, images: samples };
    draw($("grid"), await runFeeds(feedsOf(spec, 16, seed, ctl), 16), spec, 16, 4, scale);
    $("interp-row").hidden = !lat;
    if (!lat) return;
    const d = size(lat.shape), a = latentsOf(lat, 1, seed), b = latentsOf(lat, 1, seed + 1), steps = 8;
    const z = new Float32Array(steps * d);
    for (let s = 0; s < steps; s++) for (let i = 0; i < d; i++) {
      const f = s / (steps - 1);
      z[s * d + i] = (1 - f) * a[i] + f * b[i];
    }
    draw($("interp"), await runFeeds(feedsOf(spec, steps, seed, { ...ctl, z, label: label && ctl.label < 0 ? 0 : ctl.label }), steps),
         spec, steps, steps, scale);
  }
  $("go").onclick = show;
  $("next").onclick = () => { $("seed").value = Number($("seed").value) + 1; show(); };
  $("go").disabled = $("next").disabled = false;
  await show();

  const q = cfg.quant;
  const kind = q ? (q.mixed ? `${q.avg_bits.toFixed(2)} bits on average` : `${q.bits}-bit`) +
    ` ${q.method} per ${q.granularity}, ${q.format}` : "fp32";
  $("title").textContent = cfg.title;
  $("subtitle").textContent = `${cfg.source}: ${kind}`;
  const facts = [["file", `${(cfg.bytes / 1024).toFixed(1)} KiB`], ["weights", kind],
                 ["load (runtime + model)", `${tLoad.toFixed(0)} ms`], ["first image", `${tFirst.toFixed(1)} ms`],
                 ["per image, batch 1", `${timings.per_image_ms_batch1.toFixed(2)} ms`],
                 ["per image, batch 16", `${timings.per_image_ms_batch16.toFixed(2)} ms`],
                 ["onnxruntime-web", `${cfg.ort.version} (${cfg.ort.local ? "local copy" : "CDN"})`]];
  $("facts").innerHTML = facts.map(([k, v]) => `<tr><td>${k}</td><td>${v}</td></tr>`).join("");
  $("threads").textContent = isolated
    ? `cross-origin isolated: ${timings.threads} WebAssembly threads`
    : "1 WebAssembly thread: serve the page with Cross-Origin-Opener-Policy: same-origin and " +
      "Cross-Origin-Embedder-Policy: require-corp for threads";
  return { cfg, timings, generate, runFeeds: fromJSON, latents: (n, seed) => latents(spec, n, seed) };
}

window.ganq = { ready: main().then((r) => { Object.assign(window.ganq, r); return r.timings; })
  .catch((e) => { $("error").textContent = `error: ${e.message || e}`; throw e; }) };
