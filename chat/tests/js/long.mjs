// Opening a long conversation in Debian's chromium (headless): the time from navigating to the
// chat until every message is drawn, and the main thread's busy time in that window.
// Prints one JSON line.
import { run, link } from './run.mjs';

const n = Number(process.env.MESSAGES || 2000);
const out = { ok: false, errors: [] };
await run(out, async (browser) => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(60000);
  page.on('pageerror', (e) => out.errors.push(String(e)));
  await page.goto(link);
  await page.waitForSelector('#convs li.conv');
  const times = [];
  for (let i = 0; i < 3; i++) {
    const t0 = Date.now();
    await page.reload();
    await page.waitForFunction((k) => document.querySelectorAll('#log .msg').length >= k, n);
    times.push(Date.now() - t0);
  }
  out.open_ms = times;
  out.messages = await page.locator('#log .msg').count();
  out.at_end = await page.locator('#log').evaluate((l) => l.scrollHeight - l.scrollTop - l.clientHeight < 48);
});
