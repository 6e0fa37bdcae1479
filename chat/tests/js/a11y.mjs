// Accessibility of the chat page with axe-core, in Debian's chromium (headless): an empty chat, a
// reply with Markdown and tool cards, desktop and phone, light and dark. Prints one JSON line
// with the serious and critical violations found ({"ok":true,"violations":[...]}).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { run, link } from './run.mjs';

const axe = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
const out = { ok: false, violations: [], checked: [] };
// axe runs in the page through the DevTools protocol (the page's CSP allows no injected script).
const check = async (p, where) => {
  await p.evaluate(axe);
  const r = await p.evaluate(() => window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] } }));
  for (const v of r.violations) {
    if (v.impact === 'serious' || v.impact === 'critical') {
      out.violations.push({ where, id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) });
    }
  }
  out.checked.push(where);
};
await run(out, async (browser) => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  await page.goto(link);
  await page.waitForSelector('.empty');
  await check(page, 'empty, desktop, light');
  await page.fill('#text', 'show tools');
  await page.keyboard.press('Enter');
  await page.waitForSelector('.msg.assistant .status:not(.live)');
  await page.waitForTimeout(300);
  await check(page, 'tool cards, desktop, light');
  await page.emulateMedia({ colorScheme: 'dark' });
  await check(page, 'tool cards, desktop, dark');
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, colorScheme: 'dark' });
  await phone.addCookies(await context.cookies());
  const p2 = await phone.newPage();
  await p2.goto(page.url());
  await p2.waitForSelector('.msg.assistant details.tool');
  await p2.click('#menu');
  await p2.waitForTimeout(300);
  await check(p2, 'drawer open, phone, dark');
});
