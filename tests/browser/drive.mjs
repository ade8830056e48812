// Opens personalize serve's chat page in Debian's headless chromium (WebGPU on the SwiftShader software
// adapter) and calls the page's own window.personalizeRun(args); writes its result as JSON.
// usage: node drive.mjs PAGE_URL ARGS_JSON OUT_JSON   (env CHROMIUM: the browser, default /usr/bin/chromium)
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import puppeteer from "puppeteer-core";

const [pageUrl, argsJson, outPath] = process.argv.slice(2);
const t0 = Date.now();
const stamp = () => `[${((Date.now() - t0) / 1000).toFixed(1)}s]`;
const profile = fs.mkdtempSync(path.join(os.tmpdir(), "personalize-chromium-"));
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  userDataDir: profile,  // fresh profile: nothing cached from an earlier run
  protocolTimeout: 0,  // a token takes minutes on a software adapter
  args: [
    "--no-sandbox", "--no-first-run", "--disable-quic", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
    // WebGPU without a GPU: Dawn on Vulkan on SwiftShader
    "--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-vulkan=swiftshader",
    "--use-webgpu-adapter=swiftshader", "--enable-unsafe-swiftshader",
  ],
});
let code = 1;
try {
  const page = await browser.newPage();
  page.on("console", (msg) => console.log(stamp(), "console", msg.type(), msg.text()));
  page.on("pageerror", (err) => console.log(stamp(), "pageerror", String(err)));
  page.on("requestfailed", (req) => console.log(stamp(), "requestfailed", req.url(), req.failure()?.errorText));
  await page.goto(pageUrl, { waitUntil: "load" });
  await page.waitForFunction("window.personalizeReady === true", { timeout: 60000 });
  const adapter = await page.evaluate(async () => {
    const a = await navigator.gpu?.requestAdapter();
    return a ? { ...(a.info ? { vendor: a.info.vendor, architecture: a.info.architecture } : {}),
                 features: [...a.features] } : null;
  });
  console.log(stamp(), "adapter", JSON.stringify(adapter));
  if (!adapter) throw new Error("no WebGPU adapter in chromium (flags above)");
  const result = await page.evaluate((a) => window.personalizeRun(a), JSON.parse(argsJson));
  result.adapter = adapter;
  fs.writeFileSync(outPath, JSON.stringify(result));
  console.log(stamp(), "done");
  code = 0;
} catch (err) {
  console.log(stamp(), "error", err && err.stack ? err.stack : String(err));
} finally {
  await browser.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
