// Drives the chat's UI in Debian's chromium (headless) as a person would.
//
//   node chat-ui.mjs LOGIN_LINK
//
// Signs in with the one-time link, sends a message and waits for the streamed answer, opens a
// second tab that must show the same conversation, then starts a long numbered answer: takes
// screenshots as it grows (into $SHOTS, if set), follows it in the second tab, reloads mid-run
// and checks that no number is shown twice or missing, and presses Cancel. Prints one JSON
// line: {"ok":true,...} or {"ok":false,"error":...}.
import { readFileSync } from 'node:fs';
import { run, link, shots } from './run.mjs';

const out = { ok: false };
await run(out, async (browser) => {
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
  // A numbered stream (" 1", " 2", ...): the answer grows on screen, the second tab follows it
  // live, a reload in the middle picks it up again with no number twice and none missing, and
  // Cancel (from the reloaded tab) ends it in both.
  // The page, or (`what`) one element of it, scrolled into view first: a page shot of a long
  // conversation may not show the growing answer at all.
  const shot = async (p, name, what) => {
    if (!shots) return;
    await (what ? p.locator(what).last() : p).screenshot({ path: `${shots}/${name}.png` });
    (out.shots ||= []).push(name);
  };
  const numbers = async (p) => {
    const t = await p.locator('.msg.assistant .md').last().innerText();
    return (t.replace('You said:', '').match(/\d+/g) || []).map(Number);
  };
  const atLeast = async (p, k) => {
    for (let i = 0; i < 400; i++) {
      const ns = await numbers(p).catch(() => []);
      if (ns.length >= k) return ns;
      await p.waitForTimeout(50);
    }
    throw new Error(`the answer never reached ${k} numbers: ${await numbers(p).catch(() => [])}`);
  };
  const check = (where, ns) => {
    ns.forEach((n, i) => { if (n !== i + 1) throw new Error(`${where}: number ${i + 1} is ${n}: ${ns}`); });
    return ns.length;
  };
  await page.fill('#text', 'count for me');
  await page.click('#send button[type=submit]');
  out.growing = [check('page', await atLeast(page, 3))];
  await shot(page, '1-answer-starts', '.msg.assistant');
  out.growing.push(check('page', await atLeast(page, out.growing[0] + 8)));
  await shot(page, '2-answer-grew', '.msg.assistant');
  // A loaded machine may hand back a frame painted before the last deltas: the answer keeps
  // growing, so a later shot must show it (the test compares the two files).
  for (let i = 0; shots && i < 20; i++) {
    const [a, b] = ['1-answer-starts', '2-answer-grew'].map((n) => readFileSync(`${shots}/${n}.png`));
    if (!a.equals(b)) break;
    await page.waitForTimeout(100);
    await shot(page, '2-answer-grew', '.msg.assistant');
  }
  out.second_tab = check('second tab', await atLeast(tab2, out.growing[1] + 2));
  await shot(tab2, '3-second-tab-live');
  const before = check('page', await numbers(page));
  await page.reload();
  out.reload = [before, check('reloaded', await atLeast(page, before + 5))];
  await shot(page, '4-after-reload');
  await page.click('#cancel');
  await page.waitForSelector('.msg.assistant .status:has-text("cancelled")');
  await tab2.waitForSelector('.msg.assistant .status:has-text("cancelled")');
  out.cancelled = await page.locator('.msg.assistant .status').last().innerText();
  const final = [check('page', await numbers(page)), check('second tab', await numbers(tab2))];
  if (final[0] !== final[1]) throw new Error(`the tabs ended with different answers: ${final}`);
  out.final = final[0];
  await shot(page, '5-cancelled');
});
