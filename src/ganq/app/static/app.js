// ganq app: generate with a ganq .onnx file in the browser (onnxruntime-web, WebAssembly backend).
// window.ganq exposes ready (a promise), generate(z, n) and the timings, for tests and the curious.

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

// n latents from the spec's prior (normal: Box-Muller; uniform: [-1, 1)), seeded: the same seed, the same images
function latents(spec, n, seed) {
  const rand = mulberry32(seed), z = new Float32Array(n * spec.latent_dim);
  for (let i = 0; i < z.length; i++) {
    if (spec.latent === "uniform") { z[i] = rand() * 2 - 1; continue; }
    const u = Math.max(rand(), 1e-12), v = rand();
    z[i] = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  return z;
}

function draw(canvas, data, spec, n, cols, scale) {
  const [c, h, w] = [spec.channels, spec.height, spec.width];
  const [lo, hi] = spec.output_range;
  const rows = Math.ceil(n / cols);
  canvas.width = cols * w; canvas.height = rows * h;
  canvas.style.width = `${cols * w * scale}px`; canvas.style.height = `${rows * h * scale}px`;
  const ctx = canvas.getContext("2d"), img = ctx.createImageData(cols * w, rows * h);
  for (let k = 0; k < n; k++) {
    const ox = (k % cols) * w, oy = Math.floor(k / cols) * h;
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
      const p = ((oy + y) * cols * w + ox + x) * 4;
      for (let ch = 0; ch < 3; ch++) {
        const v = data[((k * c + (c === 1 ? 0 : ch)) * h + y) * w + x];
        img.data[p + ch] = Math.max(0, Math.min(255, Math.round((v - lo) / (hi - lo) * 255)));
      }
      img.data[p + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
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
  const session = await ort.InferenceSession.create(cfg.model, {
    executionProviders: ["wasm"],
    // as ganq's Python runtime: never swap DequantizeLinear -> MatMul for MatMulNBits with 8-bit activations
    extra: { session: { qdq_matmulnbits_accuracy_level: "0" } },
  });
  const tLoad = performance.now() - t0;

  async function generate(z, n) {
    const feeds = { [spec.input_name]: new ort.Tensor("float32", Float32Array.from(z), [n, spec.latent_dim]) };
    const out = await session.run(feeds);
    return out[spec.output_name].data;
  }

  let t = performance.now();
  await generate(latents(spec, 1, 0), 1);
  const tFirst = performance.now() - t;
  const per = async (n, reps) => {
    const z = latents(spec, n, 1), times = [];
    for (let r = 0; r < reps; r++) { t = performance.now(); await generate(z, n); times.push(performance.now() - t); }
    return median(times) / n;
  };
  const timings = { load_ms: tLoad, first_image_ms: tFirst, per_image_ms_batch1: await per(1, 9),
                    per_image_ms_batch16: await per(16, 5), threads: ort.env.wasm.numThreads,
                    cross_origin_isolated: isolated, page_ms: performance.now() };

  const scale = spec.height <= 32 ? 3 : 1;
  async function show() {
    const seed = Math.max(0, Math.floor(Number($("seed").value) || 0));
    draw($("grid"), await generate(latents(spec, 16, seed), 16), spec, 16, 4, scale);
    const a = latents(spec, 1, seed), b = latents(spec, 1, seed + 1), steps = 8;
    const z = new Float32Array(steps * spec.latent_dim);
    for (let s = 0; s < steps; s++) for (let i = 0; i < spec.latent_dim; i++) {
      const f = s / (steps - 1);
      z[s * spec.latent_dim + i] = (1 - f) * a[i] + f * b[i];
    }
    draw($("interp"), await generate(z, steps), spec, steps, steps, scale);
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
  return { cfg, timings, generate, latents: (n, seed) => latents(spec, n, seed) };
}

window.ganq = { ready: main().then((r) => { Object.assign(window.ganq, r); return r.timings; })
  .catch((e) => { $("error").textContent = `error: ${e.message || e}`; throw e; }) };
