// What the chat's page tests share: chromium (Debian's, headless) started and closed around a
// test body, and one JSON line on stdout with what the body found ({"ok":true,...} or
// {"ok":false,"error":...}). The login link is the first argument; screenshots go to $SHOTS.
import { chromium } from 'playwright-core';

export const link = process.argv[2];
export const shots = process.env.SHOTS;

export async function run(out, body) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox'],
  });
  try {
    await body(browser);
    out.ok = true;
  } catch (e) {
    out.error = String(e);
    // What each open chat page showed when it failed, to tell a lost message from a slow run.
    out.pages = [];
    for (const c of browser.contexts()) {
      for (const p of c.pages()) {
        out.pages.push(await p.evaluate(() => ({
          url: location.href,
          conn: document.querySelector('#conn')?.textContent,
          current: typeof state === 'undefined' ? null : state.current,
          socket: typeof state === 'undefined' ? null : state.ws?.readyState,
          pending: typeof state === 'undefined' ? null : state.pending.length,
          text: document.querySelector('#text')?.value,
          log: document.querySelector('#log')?.innerText.slice(-400),
        })).catch((err) => String(err)));
      }
    }
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(out));
}

// A page's uncaught exceptions and console errors, into `out.errors`.
export function watch(page, out) {
  page.on('pageerror', (e) => out.errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') out.errors.push(m.text()); });
}

// The chat at 1280x800, signed in through the link and watched (see `watch`), once its
// conversations are listed. `permissions`: browser permissions to grant first.
export async function desktop(browser, out, permissions = []) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  if (permissions.length) await context.grantPermissions(permissions);
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  watch(page, out);
  await page.goto(link);
  await page.waitForSelector('#convs li');
  return { context, page };
}
