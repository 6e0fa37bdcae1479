// The chat's layout in Debian's chromium (headless), at 1280x800 and 390x844, light and dark.
//
//   node layout.mjs LOGIN_LINK
//
// Fills a conversation taller than the window, then checks what a user sees: the page itself
// never scrolls and the composer stays inside the viewport; the thread follows a streaming
// answer while at its end; scrolled up it stays put and "Jump to latest" appears, and brings it
// back; Esc cancels the run; Ctrl+Shift+O starts a new chat; on a phone the conversations are a
// drawer. Screenshots into $SHOTS. Prints one JSON line: {"ok":true,...} or {"ok":false,...}.
import { run, shots, desktop, watch } from './run.mjs';

const out = { ok: false, errors: [] };
const shot = async (p, name) => { if (shots) { await p.screenshot({ path: `${shots}/${name}.png` }); (out.shots ||= []).push(name); } };
// Where the composer is, whether the page scrolls, where the thread is scrolled to.
const layout = (p) => p.evaluate(() => {
  const box = document.querySelector('#text').getBoundingClientRect();
  const log = document.querySelector('#log');
  return {
    composer_bottom: Math.round(box.bottom), viewport: innerHeight,
    page_scrolls: document.scrollingElement.scrollHeight > innerHeight + 1,
    page_wider: document.scrollingElement.scrollWidth > innerWidth + 1,
    thread_taller: log.scrollHeight > log.clientHeight,
    at_end: log.scrollHeight - log.scrollTop - log.clientHeight < 48,
    jump: !document.querySelector('#jump').hidden,
  };
});
const ok = async (p) => p.waitForFunction((n) => document.querySelectorAll('.msg.assistant .status:not(.live)').length >= n,
  await p.locator('.msg.user').count());
await run(out, async (browser) => {
  const { context, page } = await desktop(browser, out);
  // A message sent while the socket is down goes out once it is back, not lost.
  await page.evaluate(() => state.ws.close());
  await page.fill('#text', 'sent while reconnecting');
  await page.keyboard.press('Enter');
  await page.waitForSelector('text=You said: sent while reconnecting');
  out.sent_while_reconnecting = true;
  await ok(page);
  // A message sent before a slow page has opened its conversation waits for it, not ignored.
  const early = await context.newPage();
  early.setDefaultTimeout(20000);
  watch(early, out);
  await early.route('**/api/conversations', async (route) => {
    if (route.request().method() === 'GET') await new Promise((r) => setTimeout(r, 1500));
    await route.continue();
  });
  await early.goto(page.url().replace(/#.*/, ''));
  await early.fill('#text', 'sent before the page was ready');
  await early.keyboard.press('Enter');
  await early.waitForSelector('text=You said: sent before the page was ready');
  out.sent_before_ready = true;
  await ok(early);
  await early.close();
  // A conversation taller than the window: long messages, each answered.
  const long = Array.from({ length: 12 }, (_, i) => `line ${i + 1} of a long message`).join('\n');
  for (let i = 0; i < 10; i++) {
    await page.fill('#text', `message ${i + 1}\n${long}`);
    await page.keyboard.press('Enter');
    await page.waitForSelector(`text=You said: message ${i + 1}`);
    await ok(page);
  }
  out.desktop_long = await layout(page);
  await shot(page, 'desktop-long');
  out.end_line = await page.locator('.msg.assistant .status').last().innerText();
  // A streaming answer: followed while at the end.
  await page.fill('#text', 'count for me');
  await page.keyboard.press('Enter');
  await page.waitForSelector('.msg.assistant .status.live');
  await page.waitForTimeout(1200);
  out.following = await layout(page);
  out.live_status = await page.locator('.msg.assistant .status.live').last().innerText();
  await shot(page, 'desktop-streaming');
  // Scrolled up: stays put, and the button appears; the button brings the end back.
  await page.locator('#log').evaluate((l) => { l.scrollTop = 0; });
  await page.waitForTimeout(800);
  out.scrolled_up = await layout(page);
  out.scroll_top_stayed = await page.locator('#log').evaluate((l) => l.scrollTop) === 0;
  await shot(page, 'desktop-scrolled-up');
  await page.click('#jump');
  await page.waitForTimeout(300);
  out.after_jump = await layout(page);
  // Esc cancels the run.
  await page.keyboard.press('Escape');
  await page.waitForSelector('.msg.assistant .status:has-text("cancelled")');
  out.esc_cancelled = true;
  // Ctrl+Shift+O: a new, empty chat.
  const before = await page.locator('#convs li').count();
  await page.keyboard.press('Control+Shift+O');
  await page.waitForFunction((n) => document.querySelectorAll('#convs li').length > n, before);
  out.new_chat_shortcut = (await page.locator('.msg').count()) === 0;
  // Back to the long conversation, on a phone, dark.
  await page.goBack().catch(() => {});
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, colorScheme: 'dark' });
  await phone.addCookies(await context.cookies());
  const p2 = await phone.newPage();
  p2.setDefaultTimeout(20000);
  p2.on('pageerror', (e) => out.errors.push(String(e)));
  await p2.goto(page.url().replace(/#.*/, ''));
  await p2.waitForSelector('#convs li');
  // The drawer is closed: the thread has the whole width.
  out.drawer_closed = await p2.locator('aside').evaluate((a) => a.getBoundingClientRect().right <= 0);
  await p2.click('#menu');
  await p2.waitForTimeout(400);
  out.drawer_open = await p2.locator('aside').evaluate((a) => a.getBoundingClientRect().left >= 0);
  await shot(p2, 'phone-drawer');
  // Picking the long conversation closes the drawer.
  await p2.locator('#convs li > a:first-child').last().click();
  await p2.waitForTimeout(400);
  out.drawer_closed_after_pick = await p2.locator('aside').evaluate((a) => a.getBoundingClientRect().right <= 0);
  await p2.waitForSelector('text=You said: message 10');
  await p2.waitForTimeout(300);
  out.phone_long = await layout(p2);
  out.dark = await p2.evaluate(() => getComputedStyle(document.body).backgroundColor);
  await shot(p2, 'phone-long-dark');
  await page.emulateMedia({ colorScheme: 'dark' });
  await shot(page, 'desktop-dark');
});
