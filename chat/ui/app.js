// edge chat: the browser side of the chat.v1 protocol (docs/chat-protocol.md). Every URL is
// relative to the page, so the chat works under /chat/ and on chat.<project>.<domain> alike.
'use strict';
const $ = (s) => document.querySelector(s);
const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls; if (text != null) e.textContent = text; return e; };
// `opened`: resolved once a conversation is open (see `open`).
let opened;
const state = { opened: new Promise((r) => { opened = r; }), convs: [], current: null, runs: {}, ws: null, active: null, backoff: 500, follow: true, changes: [], pending: [] };
// Numbers as people read them: 19,981,760.
const num = (n) => Number(n || 0).toLocaleString('en-US');

async function api(path, opts = {}) {
  const r = await fetch(path, { headers: { 'content-type': 'application/json' }, credentials: 'same-origin', ...opts });
  if (!r.ok && r.status !== 429) throw new Error(`${path}: ${r.status}`);
  return r.status === 204 ? null : r.json();
}

// ---- Markdown: CommonMark + GFM (marked), sanitised (DOMPurify: agent text is untrusted),
// code highlighted (highlight.js) with its language and a copy button. Re-rendered at most once
// a frame while a block streams.
const PURIFY = {
  // No images (the page's CSP loads none from elsewhere), no styles, forms or embedded documents.
  FORBID_TAGS: ['img', 'style', 'form', 'button', 'textarea', 'select', 'iframe', 'svg', 'math', 'video', 'audio', 'picture', 'source'],
  FORBID_ATTR: ['style', 'srcset'],
};
// HTML the agent writes is shown as text, as claude.ai shows it: nothing of it is parsed as
// markup (DOMPurify below is the second line, for links and what Markdown itself produces).
const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
if (window.marked) marked.use({ gfm: true, renderer: { html: (t) => escapeHtml(t.text ?? t.raw ?? '') } });
function renderMarkdown(target, text) {
  const html = window.marked ? marked.parse(text, { async: false }) : null;
  if (html == null || !window.DOMPurify) { target.textContent = text; return; }
  target.innerHTML = DOMPurify.sanitize(html, PURIFY);
  for (const a of target.querySelectorAll('a[href]')) { a.target = '_blank'; a.rel = 'noopener noreferrer'; }
  // GFM task lists: checkboxes to read, not to tick.
  for (const i of target.querySelectorAll('input')) { if (i.type === 'checkbox') i.disabled = true; else i.remove(); }
  for (const code of target.querySelectorAll('pre > code')) decorateCode(code);
}
function decorateCode(code) {
  const pre = code.parentElement;
  const lang = ([...code.classList].find((c) => c.startsWith('language-')) || '').slice(9);
  if (lang && window.hljs && hljs.getLanguage(lang)) hljs.highlightElement(code);
  const bar = el('div', 'codebar');
  bar.appendChild(el('span', 'lang', lang || 'text'));
  const copy = el('button', 'copy', 'Copy'); copy.type = 'button';
  copy.onclick = async () => {
    try { await navigator.clipboard.writeText(code.textContent); copy.textContent = 'Copied'; } catch (_) { copy.textContent = 'Copy failed'; }
    setTimeout(() => { copy.textContent = 'Copy'; }, 1500);
  };
  bar.appendChild(copy);
  const box = el('div', 'codebox'); pre.replaceWith(box); box.append(bar, pre);
}
// Blocks whose text changed since they were last drawn; drawn together on the next frame.
const dirty = new Set();
function flush() { for (const d of dirty) drawBlock(d); if (dirty.size) { dirty.clear(); scroll(); } }
// A streaming block is drawn in two parts: what is settled (up to its last blank line outside a
// code fence) is rendered once and kept; only the rest is rendered again as it grows. When the
// block ends it is rendered whole, once, so that what spans parts (a loose list) is exact.
function drawBlock(b) {
  if (b.final) { b.head = null; renderMarkdown(b.body, b.text); return; }
  if (!b.head) {
    b.body.textContent = ''; b.done = 0;
    b.head = el('div', 'settled'); b.tail = el('div', 'growing'); b.body.append(b.head, b.tail);
  }
  const cut = settledCut(b.text, b.done);
  if (cut > b.done) {
    const part = el('div'); renderMarkdown(part, b.text.slice(b.done, cut));
    b.head.append(...part.childNodes); b.done = cut;
  }
  renderMarkdown(b.tail, b.text.slice(b.done));
}
// Where the text after `from` can be cut without splitting a paragraph or a code block: after
// its last blank line outside a fence (fences counted from `from`, which is never inside one).
function settledCut(text, from) {
  let cut = from, fenced = false, at = from;
  for (const line of text.slice(from).split('\n')) {
    const end = at + line.length + 1;
    if (/^\s*(```|~~~)/.test(line)) fenced = !fenced;
    else if (!fenced && line.trim() === '' && end <= text.length) cut = end;
    at = end;
  }
  return cut;
}
function redraw(b) {
  dirty.add(b);
  // A frame, or 100 ms in a tab the browser does not paint (no frames there).
  if (dirty.size === 1) { requestAnimationFrame(flush); setTimeout(flush, 100); }
}

// ---- Tool cards: one per call, drawn by tool, its result inside it.
const basename = (p) => String(p || '').split('/').pop();
const lines = (s) => String(s || '').split('\n');
// A diff of one replacement: the old lines out, the new lines in.
function diffView(path, pairs) {
  const box = el('div', 'diff');
  if (path) box.appendChild(el('div', 'path', path));
  for (const [from, to] of pairs) {
    const pre = el('pre');
    if (from) for (const l of lines(from)) pre.appendChild(el('div', 'del', '- ' + l));
    if (to != null) for (const l of lines(to)) pre.appendChild(el('div', 'ins', '+ ' + l));
    box.appendChild(pre);
  }
  return box;
}
// What each tool's call says, in a line (the card's title) and in full (its body).
const TOOLS = {
  Bash: (i) => [`$ ${i.command || ''}`, () => { const d = el('div'); if (i.description) d.appendChild(el('div', 'muted', i.description)); d.appendChild(el('pre', 'cmd', '$ ' + (i.command || ''))); return d; }],
  Read: (i) => [`${basename(i.file_path)}${i.offset ? ` · lines ${i.offset}–${i.offset + (i.limit || 0) - 1}` : ''}`, () => el('div', 'path', i.file_path || '')],
  Edit: (i) => [basename(i.file_path), () => diffView(i.file_path, [[i.old_string, i.new_string]]), true],
  MultiEdit: (i) => [`${basename(i.file_path)} · ${(i.edits || []).length} edits`, () => diffView(i.file_path, (i.edits || []).map((x) => [x.old_string, x.new_string])), true],
  Write: (i) => [basename(i.file_path), () => diffView(i.file_path, [['', i.content]]), true],
  Grep: (i) => [`${i.pattern || ''}${i.path ? ' in ' + i.path : ''}`, () => el('pre', 'cmd', `grep ${JSON.stringify(i.pattern || '')} ${i.path || ''}${i.glob ? ' --glob ' + i.glob : ''}`)],
  Glob: (i) => [`${i.pattern || ''}${i.path ? ' in ' + i.path : ''}`, () => el('pre', 'cmd', `glob ${i.pattern || ''} ${i.path || ''}`)],
  TodoWrite: (i) => [`${(i.todos || []).filter((t) => t.status === 'completed').length}/${(i.todos || []).length} done`, () => {
    const ul = el('ul', 'todos');
    for (const t of i.todos || []) { const li = el('li', t.status, t.content); li.prepend(el('span', 'box', { completed: '☑', in_progress: '◐' }[t.status] || '☐')); ul.appendChild(li); }
    return ul;
  }, true],
};
// Any other tool: its input as keys and values.
function keyValues(i) {
  const dl = el('dl', 'kv');
  for (const [k, v] of Object.entries(i || {})) { dl.appendChild(el('dt', null, k)); dl.appendChild(el('dd', null, typeof v === 'string' ? v : JSON.stringify(v, null, 2))); }
  return dl;
}
function toolCard(tool) {
  const name = tool ? tool.name : 'tool';
  const node = el('details', 'tool'); node.dataset.tool = name;
  const sum = el('summary'); const title = el('span', 'tsum', '…'); const state = el('span', 'tstate running', 'running');
  sum.append(el('span', 'tname', name), title, state); node.appendChild(sum);
  const input = el('div', 'tinput'); node.appendChild(input);
  let output = null;
  const card = {
    node, input,
    // The call's input as it streams (JSON text, incomplete): only its size shows.
    typing(text) { title.textContent = `preparing… (${text.length} bytes)`; },
    called(text) {
      let i = null; try { i = JSON.parse(text || '{}'); } catch (_) { /* shown as text below */ }
      input.textContent = '';
      if (!i) { title.textContent = ''; input.appendChild(el('pre', null, text)); return; }
      const [line, body, open] = (TOOLS[name] || ((x) => [Object.values(x).filter((v) => typeof v === 'string')[0] || '', () => keyValues(x)]))(i);
      title.textContent = line; input.appendChild(body());
      if (open) node.open = true;
      const change = fileChange(name, i);
      if (change) { card.change = change; noteChange(change); }
    },
    result(e) {
      state.className = `tstate ${e.is_error ? 'failed' : 'done'}`;
      state.textContent = e.is_error ? 'failed' : 'done';
      if (e.is_error) { node.classList.add('failed'); node.open = true; if (card.change) { card.change.failed = true; drawChanges(); } }
      if (name === 'TodoWrite' && !e.is_error) return;
      output = output || node.appendChild(el('div', 'tresult'));
      const text = e.content + (e.truncated ? '\n…(truncated)' : '');
      const pre = el('pre', e.is_error ? 'error' : null, text);
      output.textContent = '';
      if (lines(text).length > 12) {
        // Long output: its first lines, and the rest on demand.
        const more = el('details', 'more'); more.appendChild(el('summary', null, `${lines(text).length} lines`)); more.appendChild(pre);
        output.appendChild(more);
      } else output.appendChild(pre);
    },
  };
  return card;
}

// ---- Workspace changes: the files this conversation's runs changed, with their diffs, from
// the Edit, MultiEdit and Write calls (a failed call is listed, marked).
function fileChange(name, i) {
  if (!i || !i.file_path) return null;
  if (name === 'Edit') return { path: i.file_path, tool: name, pairs: [[i.old_string, i.new_string]] };
  if (name === 'MultiEdit') return { path: i.file_path, tool: name, pairs: (i.edits || []).map((x) => [x.old_string, x.new_string]) };
  if (name === 'Write') return { path: i.file_path, tool: name, pairs: [['', i.content]] };
  return null;
}
function noteChange(c) { state.changes.push(c); drawChanges(); }
function drawChanges() {
  const ok = state.changes.filter((c) => !c.failed);
  const files = [...new Set(ok.map((c) => c.path))];
  const btn = $('#changes-btn');
  btn.hidden = !state.changes.length;
  btn.textContent = `Changes (${files.length})`;
  const list = $('#changes .files'); list.textContent = '';
  const byFile = new Map();
  for (const c of state.changes) { if (!byFile.has(c.path)) byFile.set(c.path, []); byFile.get(c.path).push(c); }
  for (const [path, cs] of byFile) {
    const d = el('details', 'file'); d.open = byFile.size <= 3;
    const failed = cs.every((c) => c.failed);
    const sum = el('summary', failed ? 'failed' : null);
    sum.append(el('span', 'name', basename(path)), el('span', 'where', path), el('span', 'count', `${cs.length} ${cs.length === 1 ? 'change' : 'changes'}${failed ? ', failed' : ''}`));
    d.appendChild(sum);
    for (const c of cs) { const v = diffView(null, c.pairs); if (c.failed) v.classList.add('failed'); d.appendChild(v); }
    list.appendChild(d);
  }
  if (!byFile.size) list.appendChild(el('p', 'muted', 'No file changed in this conversation yet.'));
}

// ---- Conversations
// The sidebar: conversations by date (newest first), filtered by the search box; rename and
// delete happen in the row itself.
async function loadList() {
  state.convs = await api('api/conversations');
  drawList();
}
function dayGroup(iso) {
  const d = new Date(iso); const now = new Date();
  const days = Math.floor((new Date(now.toDateString()) - new Date(d.toDateString())) / 86400000);
  return days <= 0 ? 'Today' : days === 1 ? 'Yesterday' : days < 7 ? 'Previous 7 days' : days < 30 ? 'Previous 30 days' : 'Older';
}
function drawList() {
  const ul = $('#convs'); ul.textContent = '';
  const q = ($('#search').value || '').trim().toLowerCase();
  const shown = state.convs.filter((c) => !q || c.title.toLowerCase().includes(q))
    .sort((a, b) => String(b.updated).localeCompare(String(a.updated)));
  let group = null;
  for (const c of shown) {
    const g = dayGroup(c.updated || c.created);
    if (g !== group) { group = g; ul.appendChild(el('li', 'group', g)); }
    ul.appendChild(convRow(c));
  }
  if (!shown.length) ul.appendChild(el('li', 'none', q ? 'No conversation matches.' : 'No conversations yet.'));
}
function convRow(c) {
  const li = el('li', 'conv'); li.dataset.id = c.id;
  const a = el('a', c.id === state.current ? 'current' : '', c.title); a.href = '#' + c.id; a.title = c.title;
  a.onclick = (ev) => { ev.preventDefault(); open(c.id); document.body.classList.remove('drawer'); };
  const ren = el('button', 'icon', '✎'); ren.title = 'Rename'; ren.setAttribute('aria-label', `Rename ${c.title}`);
  ren.onclick = () => renameRow(li, c);
  const exp = el('a', 'icon', '⇩'); exp.href = `api/conversations/${c.id}/export`; exp.title = 'Export as Markdown'; exp.setAttribute('aria-label', `Export ${c.title}`);
  const del = el('button', 'icon', '✕'); del.title = 'Delete'; del.setAttribute('aria-label', `Delete ${c.title}`);
  del.onclick = () => deleteRow(li, c);
  li.append(a, ren, exp, del);
  return li;
}
// Rename in place: Enter saves, Esc (or leaving the box) keeps the old title.
function renameRow(li, c) {
  const input = el('input', 'rename'); input.value = c.title; input.setAttribute('aria-label', 'New title'); input.maxLength = 200;
  li.textContent = ''; li.appendChild(input); input.focus(); input.select();
  let done = false;
  const finish = async (save) => {
    if (done) return; done = true;
    const t = input.value.trim();
    if (save && t && t !== c.title) {
      try { await api(`api/conversations/${c.id}/rename`, { method: 'POST', body: JSON.stringify({ title: t }) }); } catch (e) { banner(`Could not rename: ${e.message}`); }
    }
    loadList();
  };
  input.onkeydown = (ev) => { if (ev.key === 'Enter') { ev.preventDefault(); finish(true); } else if (ev.key === 'Escape') { ev.preventDefault(); ev.stopPropagation(); finish(false); } };
  input.onblur = () => finish(true);
}
// Delete asks in the row itself.
function deleteRow(li, c) {
  li.textContent = ''; li.classList.add('confirm');
  const yes = el('button', 'danger', 'Delete'); const no = el('button', null, 'Keep');
  li.append(el('span', 'ask', `Delete “${c.title}”?`), yes, no);
  no.onclick = () => drawList();
  yes.onclick = async () => {
    try { await api(`api/conversations/${c.id}`, { method: 'DELETE' }); } catch (e) { banner(`Could not delete: ${e.message}`); }
    if (state.current === c.id) { state.current = null; $('#log').textContent = ''; }
    await loadList();
    if (!state.current) { if (state.convs.length) open(state.convs[0].id); else newChat(); }
  };
  yes.focus();
}
function banner(text) { const b = $('#banner'); b.textContent = text; b.style.display = text ? 'block' : 'none'; }

// What a conversation with no message yet shows: the agent, where it works, what to ask.
const EXAMPLES = ['Explain what this project does and how it is laid out', 'Find why the tests fail and fix it', 'Add a README section on how to run it locally'];
function emptyState() {
  const box = el('div', 'empty');
  const a = state.about;
  box.appendChild(el('h2', null, a ? 'Ask the agent' : 'No agent here yet'));
  if (a) {
    const dl = el('dl', 'kv');
    const row = (k, v) => { dl.appendChild(el('dt', null, k)); dl.appendChild(el('dd', null, v)); };
    row('agent', a.kind === 'claude' ? `Claude Code (${a.program})` : a.program);
    row('workspace', a.workspace);
    if (a.kind === 'claude') row('tool use', a.permission_mode === 'ask' ? 'asks you before each tool' : a.permission_mode);
    if (state.model) row('model', state.model);
    box.appendChild(dl);
    const ex = el('div', 'examples');
    for (const t of EXAMPLES) { const b = el('button', 'example', t); b.type = 'button'; b.onclick = () => { $('#text').value = t; $('#text').focus(); }; ex.appendChild(b); }
    box.appendChild(ex);
  } else {
    box.appendChild(el('p', null, 'The chat has no agent configured: set [chat.agent] in edge.toml (see docs/config.md).'));
  }
  return box;
}
function showEmpty() { if (!$('#log .msg')) { $('#log').textContent = ''; $('#log').appendChild(emptyState()); } }

async function newChat() {
  const c = await api('api/conversations', { method: 'POST', body: JSON.stringify({ title: 'New chat' }) });
  await loadList(); open(c.id);
}

function resetRuns() { for (const r of Object.values(state.runs)) clearInterval(r.timer); state.runs = {}; state.changes = []; drawChanges(); }
function open(id) {
  state.current = id; resetRuns(); state.active = null; state.follow = true; state.pinned = 0;
  $('#log').textContent = ''; location.hash = id;
  document.querySelectorAll('#convs a').forEach((a) => a.classList.toggle('current', a.hash === '#' + id));
  send({ t: 'subscribe', conversation_id: id });
  setCancel(null);
  opened();
}

// ---- Rendering runs
function userBubble(text) { const e = $('#log .empty'); if (e) e.remove(); $('#log').appendChild(el('div', 'msg user', text)); scroll(); }
// The thread follows the stream while the user is at its end; scrolled up, it stays put and a
// "jump to latest" button appears.
function scroll(force) {
  if (state.replaying) return; // one scroll after a whole conversation is drawn
  const l = $('#log');
  if (force) state.follow = true;
  // The user scrolled up since the page last put the thread at its end (its scroll event may
  // not have arrived yet): stop following now, not after moving the thread back down.
  else if (state.follow && l.scrollTop < (state.pinned || 0) - 8) state.follow = false;
  if (state.follow) { l.scrollTop = l.scrollHeight; state.pinned = l.scrollTop; }
  $('#jump').hidden = state.follow;
}
// Only the user scrolling up stops the following (the page's own scrolling, and content
// growing under it, do not); reaching the end again resumes it.
function onScroll() {
  const l = $('#log');
  if (atEnd()) state.follow = true;
  else if (l.scrollTop < (state.pinned || 0) - 8) state.follow = false;
  $('#jump').hidden = state.follow;
}
function atEnd() { const l = $('#log'); return l.scrollHeight - l.scrollTop - l.clientHeight < 48; }

function runView(runId) {
  let r = state.runs[runId];
  if (!r) {
    const box = el('div', 'msg assistant'); box.dataset.run = runId;
    const status = el('div', 'status', '…');
    box.appendChild(status); $('#log').appendChild(box);
    r = state.runs[runId] = { seq: 0, box, status, blocks: {}, tools: {}, started: null, timer: null, where: '' };
  }
  return r;
}

function apply(f) {
  const r = runView(f.run_id);
  if (f.seq <= r.seq) return; // seen (frames are deduplicated by run and seq)
  r.seq = f.seq;
  applyFrame(f, r);
  scroll();
}

function applyFrame(f, r) {
  if (f.t === 'state') {
    if (f.state === 'running' && f.outpost) r.where = f.outpost;
    live(r, f.state + (f.detail && f.state === 'dispatching' ? ` (${f.detail})` : ''), f.ts);
    if (f.state !== 'cancelling') setCancel(f.run_id);
  } else if (f.t === 'event') {
    const e = f.event;
    if (e.t === 'block_start') {
      let node, body;
      let card = null;
      if (e.kind === 'text') { node = body = el('div', 'md'); }
      else if (e.kind === 'tool_use') { card = toolCard(e.tool); node = card.node; body = card.input; if (e.tool) r.tools[e.tool.id] = card; }
      else { node = el('details', 'thinking'); node.appendChild(el('summary', null, 'Thinking')); body = el('div', 'thought'); node.appendChild(body); }
      r.blocks[e.block] = { kind: e.kind, body, text: '', tool: e.tool, card };
      r.box.insertBefore(node, r.status);
    } else if (e.t === 'delta') {
      const b = r.blocks[e.block]; if (!b) return;
      b.text += e.text;
      if (b.kind === 'text') redraw(b); else if (b.card) b.card.typing(b.text); else b.body.textContent = b.text;
    } else if (e.t === 'block_stop') {
      const b = r.blocks[e.block];
      if (b && b.kind === 'text') { b.final = true; redraw(b); }
      if (b && b.card) b.card.called(b.text);
    } else if (e.t === 'tool_result' && r.tools[e.tool_use_id]) {
      r.tools[e.tool_use_id].result(e);
    } else if (e.t === 'tool_result') {
      const d = el('details', 'tool'); d.appendChild(el('summary', e.is_error ? 'error' : null, e.is_error ? 'tool result (error)' : 'tool result'));
      d.appendChild(el('pre', null, e.content + (e.truncated ? '\n…(truncated)' : ''))); r.box.insertBefore(d, r.status);
    } else if (e.t === 'session') {
      if (e.model) state.model = e.model;
    } else if (e.t === 'notice') {
      r.box.insertBefore(el('div', 'status', `${e.kind}: ${e.detail}`), r.status);
    }
    scroll();
  } else if (f.t === 'permission_request') {
    // The agent asks before using a tool: every tab shows the question until it is resolved.
    const card = el('div', 'permission'); card.dataset.request = f.request_id;
    card.appendChild(el('div', 'question', `Allow ${f.tool}?`));
    card.appendChild(el('code', 'summary', f.summary));
    const d = el('details'); d.appendChild(el('summary', null, 'input'));
    d.appendChild(el('pre', null, JSON.stringify(f.input, null, 2))); card.appendChild(d);
    const row = el('div', 'answer');
    // The box inside its label: they wrap together on a phone.
    const always = el('input'); always.type = 'checkbox';
    const label = el('label', 'always', ` always allow ${f.tool} in this conversation`); label.prepend(always);
    const answer = (behavior) => {
      row.querySelectorAll('button').forEach((b) => { b.disabled = true; });
      send({ t: 'permission_response', run_id: f.run_id, request_id: f.request_id, behavior, always: behavior === 'allow' && always.checked });
    };
    const allow = el('button', 'allow', 'Allow'); allow.type = 'button'; allow.onclick = () => answer('allow');
    const deny = el('button', 'deny', 'Deny'); deny.type = 'button'; deny.onclick = () => answer('deny');
    row.append(allow, deny, label); card.appendChild(row);
    r.box.insertBefore(card, r.status); scroll();
  } else if (f.t === 'permission_resolved') {
    const card = r.box.querySelector(`.permission[data-request="${CSS.escape(f.request_id)}"]`);
    if (card) {
      const row = card.querySelector('.answer'); if (row) row.remove();
      const who = { always: 'always allowed in this conversation', timeout: 'no answer in time', ended: 'the run ended' }[f.by] || f.by;
      card.appendChild(el('div', `resolved ${f.behavior}`, `${f.behavior === 'allow' ? 'Allowed' : 'Denied'} (${who})`));
    }
  } else if (f.t === 'end') {
    stopLive(r);
    const u = f.usage || {};
    const parts = [f.outcome + (f.detail ? ': ' + f.detail : '')];
    if (r.started) parts.push(secs(when(f.ts) - r.started));
    if (r.where) parts.push(`on ${r.where}`);
    // Tokens only when the agent reports them (a command agent reports none).
    const cache = (u.cache_read || 0) + (u.cache_creation || 0);
    if ((u.input || 0) + (u.output || 0) + cache > 0) parts.push(`${num(u.input)} tokens in, ${num(u.output)} out` + (cache ? `, ${num(cache)} cached` : ''));
    if (f.cost_usd != null) parts.push(`$${f.cost_usd.toFixed(4)}`);
    r.status.textContent = parts.join(' · ');
    if (f.outcome !== 'ok') r.status.classList.add('error');
    setCancel(null);
    if (!f.ts) refreshLimits(); // a live end (a replayed one changes nothing)
  }
}

// A run going shows what it is doing and for how long, updated every second.
function secs(ms) { const s = ms / 1000; return s < 60 ? `${s.toFixed(s < 10 ? 1 : 0)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`; }
// `ts`: when the frame was stored (a replayed conversation), else now.
const when = (ts) => (ts ? Date.parse(ts) : Date.now());
function live(r, what, ts) {
  if (!r.started) r.started = when(ts);
  r.what = what;
  const paint = () => { r.status.textContent = `${r.what}${r.where ? ' on ' + r.where : ''} · ${secs(Date.now() - r.started)}`; };
  r.status.classList.add('live'); paint();
  if (!r.timer) r.timer = setInterval(paint, 1000);
}
function stopLive(r) { clearInterval(r.timer); r.timer = null; r.status.classList.remove('live'); }

// Why a message was not taken, and what to do about it.
function rejected(f) {
  const next = {
    rate_limited: f.retry_after ? `Try again in ${Math.ceil(f.retry_after / 60)} min.` : 'Try again later.',
    busy: 'Wait for the reply being written, or cancel it (Esc).',
    no_agent: 'Ask the operator to configure an agent ([chat.agent] in edge.toml).',
    agent_missing: 'Ask the operator to install the agent, or fix chat.agent.command.',
    sandbox: 'Ask the operator to define the sandbox profile, or fix chat.agent.sandbox.',
    invalid: 'Shorten the message (at most 64 KiB) and send it again.',
    not_found: 'The conversation is gone: start a new one (Ctrl+Shift+O).',
  }[f.code] || 'Try again; if it keeps failing, ask the operator to look at edge\'s log.';
  return `Not sent: ${f.detail} ${next}`;
}

function setCancel(runId) {
  state.active = runId;
  $('#cancel').hidden = !runId;
  $('#send button[type=submit]').disabled = !!runId;
}

function showLimits(l) {
  if (!l) return;
  const tokens = l.tokens_day.max ? ` · ${num(Math.max(0, l.tokens_day.max - l.tokens_day.used))} tokens left today` : '';
  $('#limits').textContent = `left: ${num(l.hour.max - l.hour.used)}/${num(l.hour.max)} this hour · ${num(l.day.max - l.day.used)}/${num(l.day.max)} today${tokens}`;
}
async function refreshLimits() { try { showLimits(await api('api/limits')); } catch (_) {} }

// ---- The socket
// A frame goes out now, or, for what the user did (a message, a cancel, an answer) while the
// socket is (re)connecting, as soon as it is open: nothing typed is lost. `hello` and
// `subscribe` are sent again by the socket itself when it opens.
function send(frame) {
  if (state.ws && state.ws.readyState === 1) state.ws.send(JSON.stringify(frame));
  else if (frame.t !== 'hello' && frame.t !== 'subscribe' && frame.t !== 'ping') {
    state.pending.push(frame);
    $('#conn').textContent = 'connecting… (sent once connected)';
  }
}

function connect() {
  const url = new URL('ws', location.href); url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(url, 'chat.v1'); state.ws = ws;
  ws.onopen = () => {
    state.backoff = 500; $('#conn').textContent = '';
    send({ t: 'hello' });
    // Resume: what this tab has of each run, else a snapshot.
    if (state.current) {
      const runs = Object.entries(state.runs);
      if (runs.length) { const [id, r] = runs[runs.length - 1]; send({ t: 'subscribe', conversation_id: state.current, run_id: id, last_seq: r.seq }); }
      else send({ t: 'subscribe', conversation_id: state.current });
    }
    for (const f of state.pending.splice(0)) send(f);
  };
  ws.onmessage = (m) => {
    const f = JSON.parse(m.data);
    switch (f.t) {
      case 'hello_ok':
        showLimits(f.limits);
        state.about = f.about || null;
        if ($('#log .empty')) { $('#log').textContent = ''; showEmpty(); }
        if (!f.agent) { const b = $('#banner'); b.textContent = 'No agent is configured on this server: set chat.agent.kind ("claude" or "command") and chat.agent.workspace in edge\'s config.'; b.style.display = 'block'; }
        break;
      case 'snapshot':
        if (f.conversation_id !== state.current) break;
        $('#log').textContent = ''; resetRuns(); state.pinned = 0;
        state.replaying = true;
        try {
          for (const rec of f.records) {
            if (rec.role === 'user' && !rec.frame) userBubble(rec.content);
            else if (rec.frame && rec.run_id) apply({ ...rec.frame, run_id: rec.run_id, seq: rec.seq, ts: rec.ts });
          }
        } finally { state.replaying = false; }
        flush();
        scroll(true);
        setCancel(f.active_run ? f.active_run.run_id : null);
        showEmpty();
        break;
      case 'user_message': if (f.conversation_id === state.current) { userBubble(f.text); runView(f.run_id); } loadList(); break;
      case 'accepted': break;
      case 'rejected': $('#log').appendChild(el('div', 'msg error', rejected(f))); scroll(); break;
      case 'state': case 'event': case 'end': case 'permission_request': case 'permission_resolved':
        if (f.conversation_id === state.current) apply(f); break;
      case 'gap': if (state.current) send({ t: 'subscribe', conversation_id: state.current }); break;
      case 'error': $('#conn').textContent = f.msg; break;
    }
  };
  ws.onclose = (ev) => {
    $('#conn').textContent = ev.code === 4001 ? 'signed out' : 'reconnecting…';
    setTimeout(connect, state.backoff); state.backoff = Math.min(state.backoff * 2, 10000);
  };
}

window.addEventListener('DOMContentLoaded', async () => {
  $('#new').onclick = newChat;
  $('#cancel').onclick = () => state.active && send({ t: 'cancel', run_id: state.active });
  $('#send').onsubmit = async (ev) => {
    ev.preventDefault();
    // Sent before the page has opened its first conversation (a slow start): it goes once it has.
    if (!state.current) await state.opened;
    const text = $('#text').value.trim(); if (!text) return;
    send({ t: 'send', conversation_id: state.current, text, client_msg_id: crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) });
    $('#text').value = ''; scroll(true);
  };
  // The thread: following the stream unless scrolled up.
  $('#log').addEventListener('scroll', onScroll, { passive: true });
  $('#jump').onclick = () => scroll(true);
  $('#menu').onclick = () => document.body.classList.toggle('drawer');
  $('#search').oninput = drawList;
  $('#changes-btn').onclick = () => { $('#changes').hidden = !$('#changes').hidden; };
  $('#changes .close').onclick = () => { $('#changes').hidden = true; };
  // Esc cancels the run going; Ctrl+Shift+O (⌘⇧O) starts a new chat; Esc also closes the drawer.
  document.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape') {
      if (document.body.classList.contains('drawer')) { document.body.classList.remove('drawer'); return; }
      if (!$('#changes').hidden) { $('#changes').hidden = true; return; }
      if (state.active) { ev.preventDefault(); send({ t: 'cancel', run_id: state.active }); }
    } else if ((ev.ctrlKey || ev.metaKey) && ev.shiftKey && ev.key.toLowerCase() === 'o') {
      ev.preventDefault(); newChat();
    }
  });
  // Enter sends; Shift+Enter starts a new line.
  $('#text').onkeydown = (ev) => { if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); $('#send').requestSubmit(); } };
  await loadList();
  const want = location.hash.slice(1);
  connect();
  if (want && state.convs.some((c) => c.id === want)) open(want);
  else if (state.convs.length) open(state.convs[0].id);
  else await newChat();
});
