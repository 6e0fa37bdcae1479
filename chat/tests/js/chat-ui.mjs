// Drives the chat's UI in Debian's chromium (headless) as a person would.
//
//   node chat-ui.mjs LOGIN_LINK
//
// Signs in with the one-time link, sends a message and waits for the streamed answer, opens a
// second tab that must show the same conversation, then starts a long answer and presses
// Cancel. Prints one JSON line: {"ok":true,...} or {"ok":false,"error":...}.
import { chromium } from 'playwright-core';

const [link] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox'],
});
const out = { ok: false };
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  await page.goto(link);
  await page.waitForSelector('text=Signed in as');
  await page.waitForSelector('#convs li');
  await page.fill('#text', 'hello from the browser');
  await page.click('#send button[type=submit]');
  await page.waitForSelector('text=You said: hello from the browser');
  await page.waitForSelector('.msg.assistant .status:has-text("ok")');
  const url = page.url();
  // A second tab on the same conversation shows the same history.
  const tab2 = await context.newPage();
  tab2.setDefaultTimeout(20000);
  await tab2.goto(url);
  await tab2.waitForSelector('text=You said: hello from the browser');
  out.second_tab_saw = true;
  // A long answer, cancelled from the second tab; both tabs see it end.
  await page.fill('#text', 'go slow please');
  await page.click('#send button[type=submit]');
  await tab2.waitForSelector('#cancel:not([hidden])');
  await tab2.click('#cancel');
  await page.waitForSelector('.msg.assistant .status:has-text("cancelled")');
  out.cancelled = await page.locator('.msg.assistant .status').last().innerText();
  out.ok = true;
} catch (e) {
  out.error = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
