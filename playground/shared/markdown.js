/**
 * Markdown → safe HTML for the plain, React and Vue typewriter chats: the one copy of this logic.
 *
 * Libraries, pinned in package.json (`npm install --save-exact`): marked 18.2.1 (MIT) parses, DOMPurify 3.4.18
 * (MPL-2.0 or Apache-2.0) sanitizes. The React and Vue builds get them from npm; the plain page, which has no build
 * step, maps the same two specifiers to byte-identical copies in ./vendor/ with an import map (plain/index.html).
 *
 * The model's text never runs as HTML, by two independent layers:
 * 1. Raw HTML in the text (`<img onerror=…>`, `<script>`) is rendered as text: marked's `html` renderer escapes it,
 *    so it shows on screen exactly as the model wrote it and is never parsed as markup.
 * 2. marked's output then goes through DOMPurify with an allowlist of the tags and attributes markdown produces;
 *    that also drops what markdown itself can smuggle in (a `[link](javascript:…)`).
 * Images are shown as links: an `<img>` would fetch a URL of the model's choosing (a tracking pixel, or a request
 * leaving the page's origin) the moment it renders.
 *
 * While a reply streams, the whole text so far is rendered again on each update. A half-written construct must
 * not flicker: marked already renders an unclosed ``` fence as a code block up to the end of the text, and
 * `settle` holds back the start of a fence marker (` or ``) and a lone - or = (a setext underline would briefly turn
 * the paragraph above into a heading), holds back half an emphasis marker, and closes a ** or ` left open.
 */
import { Marked } from 'marked';
import DOMPurify from 'dompurify';

const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);

const marked = new Marked({
  async: false,
  gfm: true,
  breaks: true, // a single newline is a line break, as the model means it
  renderer: {
    html({ text, block }) { // raw HTML: shown as the text it is
      const shown = escapeHtml(text);
      return block ? `<p>${shown.trim().replace(/\n/g, '<br>')}</p>\n` : shown;
    },
    code({ text, lang }) {
      const language = (lang || '').match(/^\S*/)[0];
      const label = language ? `<span class="code-lang">${escapeHtml(language)}</span>` : '<span></span>';
      const codeClass = language ? ` class="language-${escapeHtml(language)}"` : '';
      return '<div class="code-block"><div class="code-head">'
        + `${label}<button type="button" class="copy" data-testid="copy" aria-label="Copy code">Copy</button></div>`
        + `<pre><code${codeClass}>${escapeHtml(text)}</code></pre></div>\n`;
    },
    image({ href, text }) { // a link to the image, not a request for it
      return `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`;
    },
  },
});

const purifier = DOMPurify(window); // our own instance: its hook and settings touch no one else's DOMPurify
purifier.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A' && node.hasAttribute('href')) {
    node.setAttribute('target', '_blank'); // a link never replaces the chat (and its stream)
    node.setAttribute('rel', 'noopener noreferrer nofollow');
  }
});
const SANITIZE = {
  ALLOWED_TAGS: ['p', 'br', 'strong', 'em', 'del', 'code', 'pre', 'ul', 'ol', 'li', 'blockquote', 'hr', 'a',
    'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'table', 'thead', 'tbody', 'tr', 'th', 'td', 'input', 'div', 'span',
    'button'],
  ALLOWED_ATTR: ['href', 'title', 'class', 'start', 'align', 'type', 'checked', 'disabled', 'aria-label',
    'data-testid'],
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

// The containers a streaming cursor may go into: it goes into the deepest last one, at the end of the text.
const CURSOR_HOSTS = new Set(['P', 'UL', 'OL', 'LI', 'BLOCKQUOTE', 'DIV', 'PRE', 'CODE', 'H1', 'H2', 'H3', 'H4',
  'H5', 'H6', 'TABLE', 'THEAD', 'TBODY', 'TR', 'TH', 'TD']);
const BLOCK_PARENTS = new Set(['UL', 'OL', 'BLOCKQUOTE', 'TABLE', 'THEAD', 'TBODY', 'TR', 'DIV']);

const FENCE = /^ {0,3}(`{3,}|~{3,})/;
const PARTIAL_FENCE = /^ {0,3}(?:`{1,2}|~{1,2})$/; // the start of a ``` or ~~~ line
const PARTIAL_UNDERLINE = /^ {0,3}(?:-+|=+)[ \t]*$/; // a setext underline, or a bullet with nothing after it yet

function insideOpenFence(lines) {
  let open = null;
  for (const line of lines) {
    const fence = line.match(FENCE);
    if (!fence) continue;
    if (!open) open = fence[1];
    else if (fence[1][0] === open[0] && fence[1].length >= open.length && line.trim() === fence[1]) open = null;
  }
  return open !== null;
}

/**
 * The text as it is shown mid-stream (the final render uses the text as it is). Only the last line, the one still
 * being written, is touched: a half fence marker or a lone - or = is held back; in prose, a run of *, _ or ` at the
 * very end (half a marker) is held back, and a ** or ` left open is closed, so bold and code show as such at once.
 */
export function settle(text) {
  const lines = text.split('\n');
  let last = lines.pop();
  const before = lines.length ? `${lines.join('\n')}\n` : '';
  if (PARTIAL_FENCE.test(last)) return before;
  if (insideOpenFence(lines) || FENCE.test(last)) return before + last; // code: shown as it is
  last = last.replace(/[*_`]+$/, '');
  if (PARTIAL_UNDERLINE.test(last)) return before;
  const ticks = (last.match(/`/g) || []).length;
  if (ticks % 2 === 1) return before + last + (/`[^`\s][^`]*$/.test(last) ? '`' : '');
  const bold = ticks === 0 && (last.match(/\*\*/g) || []).length % 2 === 1 && /\*\*[^*\s][^*]*$/.test(last);
  return before + last + (bold ? '**' : '');
}

function cursorElement() {
  const cursor = document.createElement('span');
  cursor.className = 'cursor';
  cursor.dataset.testid = 'cursor';
  cursor.setAttribute('aria-hidden', 'true');
  return cursor;
}

const finished = new Map(); // text → html of finished replies: re-rendering a long conversation costs nothing
const FINISHED_CACHE = 500;

/**
 * Safe HTML for the assistant's markdown `text`. `streaming`: the text is still growing — half-written constructs
 * are settled and the typing cursor goes at the end of the text, inside the last paragraph, item or code block.
 */
export function renderMarkdown(text, { streaming = false } = {}) {
  if (!streaming && finished.has(text)) return finished.get(text);
  const html = marked.parse(streaming ? settle(text) : text);
  const fragment = purifier.sanitize(html, SANITIZE);
  // marked puts a newline between blocks: gone, so the text reads the same mid-stream as at the end.
  const walker = document.createTreeWalker(fragment, NodeFilter.SHOW_TEXT);
  const blank = [];
  while (walker.nextNode()) {
    const node = walker.currentNode;
    const parent = node.parentNode;
    if (!node.data.trim() && (parent === fragment || BLOCK_PARENTS.has(parent.nodeName))) blank.push(node);
  }
  blank.forEach((node) => node.remove());
  if (streaming) {
    let host = fragment;
    while (host.lastElementChild && CURSOR_HOSTS.has(host.lastElementChild.nodeName)) host = host.lastElementChild;
    host.append(cursorElement());
  }
  const box = document.createElement('div');
  box.append(fragment);
  const out = box.innerHTML;
  if (!streaming) {
    if (finished.size >= FINISHED_CACHE) finished.delete(finished.keys().next().value);
    finished.set(text, out);
  }
  return out;
}

/**
 * Click handler for a message log (event delegation: the rendered HTML carries no handlers): a code block's Copy
 * button puts the block's text on the clipboard and says whether it worked.
 */
export async function copyCodeOnClick(event) {
  const button = event.target instanceof Element ? event.target.closest('.code-block button.copy') : null;
  const code = button?.closest('.code-block').querySelector('pre > code');
  if (!code) return;
  let label = 'Copied';
  try {
    await navigator.clipboard.writeText(code.textContent); // needs a secure context: https, or localhost
  } catch {
    label = 'Copy failed';
  }
  button.textContent = label;
  button.dataset.copied = label === 'Copied' ? 'true' : 'false';
  clearTimeout(button.resetTimer);
  button.resetTimer = setTimeout(() => {
    button.textContent = 'Copy';
    delete button.dataset.copied;
  }, 2000);
}

/**
 * Hands streamed tokens on to `apply(text)` at most once an animation frame, joined: each update renders the whole
 * reply again, so tokens that arrive together (one network read often carries several) cost one render. `flush()`
 * hands on what is left at once; call it before marking the reply finished.
 */
export function tokensPerFrame(apply) {
  let pending = '';
  let frame = 0;
  const flush = () => {
    cancelAnimationFrame(frame);
    frame = 0;
    if (!pending) return;
    const text = pending;
    pending = '';
    apply(text);
  };
  return {
    push(token) {
      pending += token;
      frame ||= requestAnimationFrame(flush);
    },
    flush,
  };
}
