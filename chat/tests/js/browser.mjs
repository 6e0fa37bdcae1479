// Drives Debian's chromium (headless) through a sign-in, as a person would.
//
//   node browser.mjs URL LOGIN EXPECT
//
// Opens URL (the chat, through the gateway), presses the signed-out page's button, types LOGIN into the provider's sign-in form,
// confirms, and waits until the page shows EXPECT. Every *.example.test name resolves to
// 127.0.0.1; the gateway's certificate comes from the test's own CA, so certificate errors
// are ignored. Prints one JSON line: {"ok":true,"url":...,"text":...} or {"ok":false,...}.
import { chromium } from 'playwright-core';

const [url, login, expect] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ['--host-resolver-rules=MAP *.example.test 127.0.0.1', '--no-sandbox'],
});
const out = { ok: false, steps: [] };
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  await page.goto(url);
  out.steps.push(page.url());
  // The signed-out page: its one button starts the sign-in.
  if (process.env.SHOTS) {
    await page.screenshot({ path: `${process.env.SHOTS}/signed-out-desktop.png` });
    await page.setViewportSize({ width: 390, height: 844 });
    await page.screenshot({ path: `${process.env.SHOTS}/signed-out-phone.png` });
    await page.setViewportSize({ width: 1280, height: 800 });
  }
  await page.click('a.button:has-text("Sign in with")');
  await page.waitForLoadState();
  out.steps.push(page.url());
  await page.fill('input[name=login]', login);
  await page.fill('input[name=password]', 'any password');
  await page.click('button[type=submit]');
  // oidc-provider asks for consent on the first sign-in.
  await page.waitForLoadState();
  out.steps.push(page.url());
  const consent = page.locator('button[type=submit]');
  if (await consent.count() && !page.url().startsWith(url)) {
    await consent.click();
  }
  await page.waitForSelector(`text=${expect}`);
  // The app's WebSocket is up (over TLS, next to an HTTP/2 page): it shows the limits it got.
  await page.waitForSelector('#limits:not(:empty)');
  out.limits = await page.innerText('#limits');
  out.url = page.url();
  out.text = await page.innerText('body');
  out.cookies = (await context.cookies()).map((c) => ({ name: c.name, secure: c.secure, httpOnly: c.httpOnly, sameSite: c.sameSite, domain: c.domain }));
  out.ok = true;
} catch (e) {
  out.error = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
