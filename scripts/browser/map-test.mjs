// Loads a live gossipd's federation map in headless Chromium and checks what a person would:
// every server drawn, the tree's edges drawn, and a killed server marked dead within seconds.
// Run by scripts/check-map.sh, which starts the federation; usage:
//   node map-test.mjs URL SERVERS TREE_EDGES KILL_PID KILL_ID OUT_DIR
import { chromium } from "playwright-core";

const [url, servers, treeEdges, killPid, killId, outDir] = process.argv.slice(2);
if (!outDir) {
  console.error("usage: node map-test.mjs URL SERVERS TREE_EDGES KILL_PID KILL_ID OUT_DIR");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on("pageerror", e => { console.error("page error:", e.message); failed = true; });
  await page.goto(url);
  await page.waitForFunction(
    ([n, t]) => document.querySelectorAll("svg g.server").length === n &&
      document.querySelectorAll("svg line.edge.tree").length === t,
    [Number(servers), Number(treeEdges)],
    { timeout: 30_000 },
  );
  const ids = await page.$$eval("svg g.server", gs => gs.map(g => g.dataset.id + "=" + g.dataset.state));
  console.log(`map: ${ids.length} servers (${ids.join(", ")}), ${treeEdges} tree edges`);
  await page.screenshot({ path: `${outDir}/map-1280x800.png` });
  // The same page on a phone.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: `${outDir}/map-phone.png`, fullPage: true });
  await page.setViewportSize({ width: 1280, height: 800 });

  process.kill(Number(killPid), "SIGKILL");
  const t0 = Date.now();
  await page.waitForSelector(`svg g.server[data-id="${killId}"][data-state="dead"]`, { timeout: 20_000 });
  const seconds = (Date.now() - t0) / 1000;
  // Marked in words too, not only by shape or colour.
  const words = await page.$eval(`svg g.server[data-id="${killId}"] text.state`, t => t.textContent);
  if (!words.includes("dead")) throw new Error(`the dead server's label says "${words}"`);
  const row = await page.$eval(`tr[data-id="${killId}"] td.state`, td => td.textContent);
  if (!row.includes("dead")) throw new Error(`the table says "${row}"`);
  console.log(`map: ${killId} shown dead ${seconds.toFixed(1)} s after kill -9`);
  await page.screenshot({ path: `${outDir}/map-after-kill.png` });
} catch (e) {
  console.error("map check failed:", e.message);
  failed = true;
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
