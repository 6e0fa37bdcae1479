// Tool cards in Debian's chromium (headless): the test agent plays a recorded turn ("show tools":
// thinking, Bash, Read, Edit, Grep, TodoWrite, a failing Bash and an unknown tool, each with its
// result). Prints one JSON line with what each card shows; screenshots into $SHOTS.
import { run, shots, desktop } from './run.mjs';

const out = { ok: false, errors: [] };
const cards = (p) => p.evaluate(() => [...document.querySelectorAll('.msg.assistant details.tool')].map((d) => ({
  tool: d.dataset.tool,
  title: d.querySelector('.tsum').textContent,
  state: d.querySelector('.tstate').textContent,
  open: d.open,
  failed: d.classList.contains('failed'),
  cmd: [...d.querySelectorAll('pre.cmd')].map((e) => e.textContent),
  del: [...d.querySelectorAll('.diff .del')].map((e) => e.textContent),
  ins: [...d.querySelectorAll('.diff .ins')].map((e) => e.textContent),
  todos: [...d.querySelectorAll('ul.todos li')].map((e) => `${e.className}: ${e.textContent}`),
  kv: [...d.querySelectorAll('dl.kv dt')].map((e) => e.textContent),
  result: (d.querySelector('.tresult') || { textContent: null }).textContent,
})));
await run(out, async (browser) => {
  const { context, page } = await desktop(browser, out);
  await page.fill('#text', 'show tools');
  await page.keyboard.press('Enter');
  await page.waitForSelector('.msg.assistant .status:not(.live):has-text("ok")');
  await page.waitForTimeout(300);
  out.cards = await cards(page);
  out.thinking = await page.evaluate(() => [...document.querySelectorAll('details.thinking')].map((d) => ({ open: d.open, text: d.textContent })));
  out.answer = await page.locator('.msg.assistant .md').last().innerText();
  if (shots) await page.screenshot({ path: `${shots}/tools-desktop.png` });
  // The files the run changed, with their diffs, in a panel.
  out.changes_button = await page.locator('#changes-btn').innerText();
  await page.click('#changes-btn');
  out.changes = await page.locator('#changes').evaluate((p) => ({
    shown: !p.hidden,
    files: [...p.querySelectorAll('details.file .where')].map((e) => e.textContent),
    del: [...p.querySelectorAll('.del')].map((e) => e.textContent),
    ins: [...p.querySelectorAll('.ins')].map((e) => e.textContent),
  }));
  if (shots) await page.screenshot({ path: `${shots}/changes-desktop.png` });
  await page.keyboard.press('Escape');
  out.changes_closed = await page.locator('#changes').evaluate((p) => p.hidden);
  // After a reload the conversation is drawn from its file: the same cards.
  await page.reload();
  await page.waitForSelector('.msg.assistant details.tool');
  await page.waitForTimeout(300);
  out.after_reload_same = JSON.stringify(await cards(page)) === JSON.stringify(out.cards);
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, colorScheme: 'dark' });
  await phone.addCookies(await context.cookies());
  const p2 = await phone.newPage();
  p2.on('pageerror', (e) => out.errors.push(String(e)));
  await p2.goto(page.url());
  await p2.waitForSelector('.msg.assistant details.tool');
  await p2.evaluate(() => document.querySelectorAll('details.tool, details.thinking').forEach((d) => { d.open = true; }));
  await p2.waitForTimeout(200);
  out.phone_wider = await p2.evaluate(() => document.scrollingElement.scrollWidth > innerWidth + 1);
  if (shots) await p2.locator('.msg.assistant').last().screenshot({ path: `${shots}/tools-phone-dark-open.png` });
});
