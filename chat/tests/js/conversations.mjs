// Conversations in Debian's chromium (headless): the empty conversation's page, titles from the
// first message, search, rename and delete in the sidebar (no browser dialogs), and the export.
// Prints one JSON line ({"ok":true,...} or {"ok":false,...}); screenshots into $SHOTS.
import { run, link, shots, watch } from './run.mjs';

const out = { ok: false, errors: [] };
const shot = async (p, name) => { if (shots) await p.screenshot({ path: `${shots}/${name}.png` }); };
await run(out, async (browser) => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  watch(page, out);
  page.on('dialog', (d) => { out.errors.push(`a browser dialog: ${d.message()}`); d.dismiss(); });
  const titles = () => page.locator('#convs li.conv > a:first-child').allInnerTexts();
  await page.goto(link);
  // The first visit opens an empty conversation: the agent, its workspace, examples.
  await page.waitForSelector('.empty .example');
  out.empty = await page.locator('.empty').evaluate((e) => ({
    heading: e.querySelector('h2').textContent,
    facts: [...e.querySelectorAll('dt')].map((d) => `${d.textContent}: ${d.nextElementSibling.textContent}`),
    examples: e.querySelectorAll('.example').length,
  }));
  await shot(page, 'empty-desktop');
  await page.locator('.empty .example').first().click();
  out.example_fills = await page.inputValue('#text');
  // The first message names the conversation.
  await page.fill('#text', 'Fix the flaky login test\nIt fails one run in ten.');
  await page.keyboard.press('Enter');
  await page.waitForSelector('.msg.assistant .status:not(.live):has-text("ok")');
  await page.waitForFunction(() => [...document.querySelectorAll('#convs li.conv > a:first-child')].some((a) => a.textContent === 'Fix the flaky login test'));
  await page.keyboard.press('Control+Shift+O');
  await page.waitForSelector('.empty');
  await page.fill('#text', 'Write release notes for 2.0');
  await page.keyboard.press('Enter');
  await page.waitForSelector('.msg.assistant .status:not(.live):has-text("ok")');
  await page.waitForFunction(() => [...document.querySelectorAll('#convs li.conv > a:first-child')].some((a) => a.textContent === 'Write release notes for 2.0'));
  out.titles = await titles();
  out.groups = await page.locator('#convs li.group').allTextContents();
  // Search.
  await page.fill('#search', 'release');
  out.search = await titles();
  await page.fill('#search', 'nothing like this');
  out.search_none = await page.locator('#convs li.none').innerText();
  await page.fill('#search', '');
  await shot(page, 'sidebar-desktop');
  // Rename in the row.
  const row = (t) => page.locator('#convs li.conv', { has: page.locator(`a:text-is("${t}")`) });
  await row('Write release notes for 2.0').hover();
  await row('Write release notes for 2.0').locator('button[title=Rename]').click();
  await page.fill('#convs input.rename', 'Release notes');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => [...document.querySelectorAll('#convs li.conv > a:first-child')].some((a) => a.textContent === 'Release notes'));
  // Escape keeps the old title.
  await row('Release notes').hover();
  await row('Release notes').locator('button[title=Rename]').click();
  await page.fill('#convs input.rename', 'Not this');
  await page.keyboard.press('Escape');
  await page.waitForFunction(() => !document.querySelector('#convs input.rename'));
  out.after_rename = await titles();
  // Delete asks in the row; Keep keeps it.
  await row('Fix the flaky login test').hover();
  await row('Fix the flaky login test').locator('button[title=Delete]').click();
  out.confirm = await page.locator('#convs li.confirm').innerText();
  await shot(page, 'delete-confirm');
  await page.locator('#convs li.confirm button', { hasText: 'Keep' }).click();
  out.kept = await titles();
  await row('Fix the flaky login test').hover();
  await row('Fix the flaky login test').locator('button[title=Delete]').click();
  await page.locator('#convs li.confirm button', { hasText: 'Delete' }).click();
  await page.waitForFunction(() => ![...document.querySelectorAll('#convs li.conv > a:first-child')].some((a) => a.textContent === 'Fix the flaky login test'));
  out.after_delete = await titles();
  // A cancelled reply, then the export.
  await row('Release notes').locator('a').first().click();
  await page.waitForSelector('.msg.user');
  await page.fill('#text', 'go slow');
  await page.keyboard.press('Enter');
  await page.waitForSelector('.msg.assistant .status.live');
  await page.keyboard.press('Escape');
  await page.waitForSelector('.msg.assistant .status:has-text("cancelled")');
  const href = await row('Release notes').locator('a[title="Export as Markdown"]').getAttribute('href');
  // Fetched by the page itself (the browser resolves *.localhost; node does not).
  const got = await page.evaluate(async (h) => { const r = await fetch(h); return { name: r.headers.get('content-disposition'), body: await r.text() }; }, href);
  out.export_name = got.name;
  out.export = got.body;
  // The empty page on a phone.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  await phone.addCookies(await context.cookies());
  const p2 = await phone.newPage();
  p2.on('pageerror', (e) => out.errors.push(String(e)));
  await p2.goto(page.url().replace(/#.*/, ''));
  await p2.waitForSelector('#convs li.conv');
  await p2.keyboard.press('Control+Shift+O');
  await p2.waitForSelector('.empty .example');
  out.phone_wider = await p2.evaluate(() => document.scrollingElement.scrollWidth > innerWidth + 1);
  await shot(p2, 'empty-phone');
});
