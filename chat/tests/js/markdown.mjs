// Markdown and XSS in the chat's answers, in Debian's chromium (headless).
//
//   node markdown.mjs LOGIN_LINK
//
// The test agent answers "You said: " and the message, so a message is a fixture for the
// answer: one with every Markdown element the chat renders, one with the usual XSS payloads.
// Prints one JSON line with what the page shows ({"ok":true,...} or {"ok":false,...});
// screenshots into $SHOTS.
import { run, shots, desktop } from './run.mjs';

const out = { ok: false, errors: [] };
const fence = '```';
const FIXTURE = `fixture

## Heading two

Some *emphasis*, **strong**, \`inline code\` and a [link](https://example.com/docs).

- one
- two

1. first
2. second

- [x] done
- [ ] todo

> a quote

| a | b |
|---|---|
| 1 | 2 |

${fence}rust
fn main() { println!("hi"); }
${fence}`;
const XSS = `xss

<img src=x onerror="window.__xss='img'">
<script>window.__xss='script'</script>
[click me](javascript:window.__xss='link')
<a href="javascript:window.__xss='a'">raw link</a>
<div onmouseover="window.__xss='div'">hover me</div>
<iframe src="javascript:window.__xss='iframe'"></iframe>

${fence}html
<script>window.__xss='code'</script>
${fence}`;
await run(out, async (browser) => {
  const { context, page } = await desktop(browser, out, ['clipboard-read', 'clipboard-write']);
  out.csp = (await page.reload()).headers()['content-security-policy'];
  await page.waitForSelector('#convs li');
  const ask = async (text, n) => {
    await page.fill('#text', text);
    await page.keyboard.press('Enter');
    await page.waitForFunction((k) => document.querySelectorAll('.msg.assistant .status:not(.live)').length >= k, n);
    await page.waitForTimeout(300);
    return page.locator('.msg.assistant .md').last();
  };
  const md = await ask(FIXTURE, 1);
  out.markdown = await md.evaluate((m) => {
    const q = (s) => m.querySelectorAll(s);
    const t = (s) => [...q(s)].map((e) => e.textContent.trim());
    const a = m.querySelector('a');
    return {
      h2: t('h2'), em: t('em'), strong: t('strong'), inline_code: t(':not(pre) > code'),
      link: a && { href: a.getAttribute('href'), rel: a.rel, target: a.target },
      ul_items: t('ul > li'), ol_items: t('ol > li'),
      checkboxes: [...q('input[type=checkbox]')].map((i) => ({ checked: i.checked, disabled: i.disabled })),
      blockquote: t('blockquote'), th: t('th'), td: t('td'),
      code_lang: t('.codebox .lang'), highlighted: q('pre code.hljs .hljs-keyword').length > 0,
      code: t('pre code'),
    };
  });
  await md.locator('.codebox .copy').click();
  // The label changes once the clipboard has the code (and back after 1.5 s).
  out.copy_label = await page.waitForFunction(() => [...document.querySelectorAll('.codebox .copy')].some((b) => b.textContent === 'Copied'), null, { timeout: 1400 })
    .then(() => 'Copied', () => md.locator('.codebox .copy').innerText());
  out.clipboard = await page.evaluate(() => navigator.clipboard.readText());
  if (shots) { await page.screenshot({ path: `${shots}/markdown-desktop.png` }); }
  const x = await ask(XSS, 2);
  await x.locator('text=hover me').hover().catch(() => {});
  await page.waitForTimeout(300);
  out.xss = await x.evaluate((m) => ({
    fired: window.__xss === undefined ? null : window.__xss,
    img: m.querySelectorAll('img').length,
    script: m.querySelectorAll('script').length,
    iframe: m.querySelectorAll('iframe').length,
    js_links: [...m.querySelectorAll('a')].filter((a) => (a.getAttribute('href') || '').trim().toLowerCase().startsWith('javascript')).length,
    handlers: [...m.querySelectorAll('*')].filter((e) => [...e.attributes].some((a) => a.name.startsWith('on'))).length,
    code: [...m.querySelectorAll('pre code')].map((c) => c.textContent.trim()),
    shown_as_text: m.textContent.includes(`<img src=x onerror="window.__xss='img'">`) && m.textContent.includes(`<script>window.__xss='script'</script>`),
  }));
  if (shots) { await page.screenshot({ path: `${shots}/xss-desktop.png` }); }
  // What one redraw of a streaming block costs the main thread, as the answer grows (a block is
  // redrawn at most once a frame, whatever the delta rate): Markdown, sanitising, highlighting.
  out.redraw_ms = await page.evaluate(() => {
    const para = 'Some *text* with `code` and a [link](https://example.com). ';
    const code = '```rust\nfn main() { let x = 1; println!("{x}"); }\n```\n\n';
    const unit = para.repeat(4) + '\n\n- item\n- item\n\n' + code;
    const r = {};
    for (const kib of [1, 10, 50]) {
      // A block streamed in 40-character deltas up to this size, drawn after each; the cost of
      // the last 20 draws.
      const b = { text: '', body: document.createElement('div') };
      let full = ''; while (full.length < kib * 1024) full += unit;
      let t0 = 0, n = 0;
      for (let at = 0; at < full.length; at += 40) {
        b.text = full.slice(0, at + 40);
        const last = at + 40 >= full.length - 20 * 40;
        if (last && !t0) t0 = performance.now();
        drawBlock(b);
        if (last) n++;
      }
      r[`${kib}KiB`] = +((performance.now() - t0) / n).toFixed(2);
      // And the whole block once, at its end.
      b.final = true; const t1 = performance.now(); drawBlock(b);
      r[`${kib}KiB_final`] = +(performance.now() - t1).toFixed(2);
    }
    return r;
  });
  // The same answers on a phone, dark.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, colorScheme: 'dark' });
  await phone.addCookies(await context.cookies());
  const p2 = await phone.newPage();
  p2.on('pageerror', (e) => out.errors.push(String(e)));
  await p2.goto(page.url());
  await p2.waitForSelector('.codebox');
  await p2.waitForTimeout(300);
  await p2.locator('.msg.assistant').first().scrollIntoViewIfNeeded();
  out.phone_wider = await p2.evaluate(() => document.scrollingElement.scrollWidth > innerWidth + 1);
  if (shots) { await p2.locator('.msg.assistant').first().screenshot({ path: `${shots}/markdown-phone-dark.png` }); }
});
