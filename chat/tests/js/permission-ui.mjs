// A tool permission question in the chat's UI, in Debian's chromium (headless), as people meet
// it.
//
//   node permission-ui.mjs LOGIN_LINK
//
// Signs in, sends a message to an agent that asks before writing a file, and waits until the
// question shows in this tab and in a second one on the same conversation (desktop and phone
// sizes). Allows it in the second tab: the first must show it resolved, by whom, with its
// buttons gone, and the run ends ok. Then a second run, denied from the phone-sized tab.
// Screenshots go to $SHOTS when set. Prints one JSON line: {"ok":true,...} or {"ok":false,...}.
import { run, link, shots } from './run.mjs';

const out = { ok: false, shots: [] };
const shot = async (p, name) => {
  if (!shots) return;
  await p.screenshot({ path: `${shots}/${name}.png` });
  out.shots.push(name);
};
await run(out, async (browser) => {
  const desk = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const a = await desk.newPage();
  a.setDefaultTimeout(20000);
  await a.goto(link);
  await a.waitForSelector('text=Signed in as');
  await a.waitForSelector('#convs li');
  const url = a.url();
  const phone = await browser.newContext({
    viewport: { width: 390, height: 844 }, isMobile: true, storageState: await desk.storageState(),
  });
  const b = await phone.newPage();
  b.setDefaultTimeout(20000);
  await b.goto(url);
  await b.waitForSelector('#convs li');
  await a.fill('#text', 'keep this note');
  await a.click('#send button[type=submit]');
  await a.waitForSelector('.permission button.allow');
  await b.waitForSelector('.permission button.allow');
  out.question = await a.locator('.permission').last().innerText();
  await shot(a, '1-question-desktop');
  await shot(b, '2-question-phone');
  out.phone_overflows = await b.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
  await b.click('.permission button.allow');
  await a.waitForSelector('.permission .resolved.allow');
  out.resolved_in_other_tab = await a.locator('.permission .resolved').last().innerText();
  out.buttons_left = await a.locator('.permission button').count();
  await a.waitForSelector('.msg.assistant .status:has-text("ok")');
  out.answer = await a.locator('.msg.assistant .md').last().innerText();
  await shot(a, '3-allowed-desktop');
  // Denied, from the phone.
  await a.fill('#text', 'another note');
  await a.click('#send button[type=submit]');
  await b.waitForSelector('.permission:not(:has(.resolved)) button.deny');
  await b.click('.permission:not(:has(.resolved)) button.deny');
  await a.waitForSelector('.permission .resolved.deny');
  await a.waitForSelector('text=denied: operator denied this in the chat');
  await shot(b, '4-denied-phone');
});
