// Opens pages in Debian's chromium (headless) as a visitor would, at desktop and phone sizes.
//
//   node page.mjs OUT_DIR URL...
//
// For each URL and size: the status, the title, the visible text, every link and whether it
// loads (its status), the console's errors (a Content-Security-Policy violation is one),
// the resources that did not load, whether the page is wider than the screen, and a screenshot in OUT_DIR. The gateway's
// certificate comes from the test's own CA, so certificate errors are ignored; *.example.test
// resolves to 127.0.0.1. Prints one JSON line: {"ok":true,"pages":[...]} or {"ok":false,...}.
import { chromium } from 'playwright-core';

const [dir, ...urls] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const sizes = [
  { name: 'desktop', width: 1280, height: 800 },
  { name: 'phone', width: 390, height: 844, isMobile: true },
];
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ['--host-resolver-rules=MAP *.example.test 127.0.0.1', '--no-sandbox'],
});
const out = { ok: false, pages: [] };
try {
  for (const size of sizes) {
    const context = await browser.newContext({
      ignoreHTTPSErrors: true,
      viewport: { width: size.width, height: size.height },
      isMobile: !!size.isMobile,
    });
    for (const [i, url] of urls.entries()) {
      const page = await context.newPage();
      page.setDefaultTimeout(20000);
      const errors = [];
      const failed = [];
      // The page's own status is reported apart; its resources must all load.
      page.on('console', (m) => {
        if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) errors.push(m.text());
      });
      page.on('response', (r) => {
        if (r.status() >= 400 && r.url() !== url) failed.push(`${r.status()} ${r.url()}`);
      });
      page.on('requestfailed', (r) => failed.push(`${r.failure()?.errorText} ${r.url()}`));
      page.on('pageerror', (e) => errors.push(String(e)));
      const resp = await page.goto(url, { waitUntil: 'load' });
      const links = await page.$$eval('a[href]', (as) => as.map((a) => a.href));
      const checked = [];
      for (const href of [...new Set(links)]) {
        if (!href.startsWith('http')) continue;
        // Followed as a click would: a page of its own, through the browser's resolver.
        const other = await context.newPage();
        const r = await other.goto(href, { waitUntil: 'domcontentloaded' });
        checked.push({ href, status: r ? r.status() : 0, landed: other.url() });
        await other.close();
      }
      const shot = `${dir}/${i}-${size.name}.png`;
      await page.screenshot({ path: shot, fullPage: true });
      out.pages.push({
        url,
        size: size.name,
        status: resp.status(),
        title: await page.title(),
        text: await page.innerText('body'),
        links: checked,
        errors,
        failed,
        overflows: await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth),
        screenshot: shot,
      });
      await page.close();
    }
    await context.close();
  }
  out.ok = true;
} catch (e) {
  out.error = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
