// Drive a ganq app page in headless chromium (Debian's, via puppeteer-core; no browser download):
//   node app-check.mjs URL LATENTS.json OUT.json [SCREENSHOT.png]
// LATENTS.json: {"n": N, "z": [...]} (the first latent) or {"n": N, "feeds": {name: {type, dims, data}}} (every
// input); OUT.json gets the page's output for them, its timings and what its controls show.
import fs from "node:fs";
import puppeteer from "puppeteer-core";

const [url, latentsPath, outPath, shot] = process.argv.slice(2);
const { n, z, feeds } = JSON.parse(fs.readFileSync(latentsPath, "utf8"));
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage();
  const logs = [];
  page.on("console", (m) => logs.push(m.text()));
  page.on("pageerror", (e) => logs.push(String(e)));
  await page.setViewport({ width: 900, height: 1100 });
  const t0 = Date.now();
  await page.goto(url, { waitUntil: "load" });
  const timings = await page.evaluate(() => window.ganq.ready);
  const wall = Date.now() - t0;
  const image = await page.evaluate(async (z, n, feeds) => Array.from(
    feeds ? await window.ganq.runFeeds(feeds, n) : await window.ganq.generate(z, n)), z, n, feeds);
  const controls = await page.evaluate(() => ({
    classes: Array.from(document.querySelectorAll("#label option")).map((o) => o.textContent),
    upload: !document.getElementById("upload-row").hidden,
    interpolation: !document.getElementById("interp-row").hidden }));
  if (shot) await page.screenshot({ path: shot, fullPage: true });
  fs.writeFileSync(outPath, JSON.stringify({ timings, page_to_ready_ms: wall, image, controls, logs }));
} finally {
  await browser.close();
}
