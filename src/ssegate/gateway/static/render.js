/**
 * Markdown → sanitised HTML for model output, which is untrusted.
 *
 * marked turns the text into HTML (raw HTML in the text passes through it), then DOMPurify
 * (its own instance, so its hooks touch nobody else) keeps only inert markup:
 *
 * - no scripts, event handlers, styles, forms, frames, SVG or MathML;
 * - links keep only http(s), mailto and in-page URLs (javascript:, data:, vbscript: … lose
 *   their href), and open in a new tab with rel="noopener noreferrer nofollow";
 * - no images: a markdown image becomes a link to it, raw <img> is dropped. A model that was
 *   fed a hostile prompt could otherwise leak the conversation in an image URL that the
 *   browser fetches by itself;
 * - no id/name attributes (they could clobber the page's own globals), no data-* attributes,
 *   and class only as `language-*` on code blocks.
 *
 * The page's Content-Security-Policy (no inline script) is a second wall behind this one.
 */
import { Marked } from './vendor/marked/marked.esm.js';
import createDOMPurify from './vendor/dompurify/purify.es.mjs';

const SAFE_PROTOCOLS = new Set(['http:', 'https:', 'mailto:']);

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const marked = new Marked({
  gfm: true,
  breaks: false,
  renderer: {
    image({ href, title, text }) {
      const label = text || title || href || 'image';
      return `<a href="${escapeHtml(href || '')}" class="image-link">🖼 ${escapeHtml(label)}</a>`;
    },
  },
});

const purify = createDOMPurify(window);

/** Whether `href` may stay on a link: http(s), mailto or a same-page URL. */
export function isSafeHref(href) {
  if (href == null) return false;
  // Browsers drop ASCII whitespace and control characters in a scheme ("java\tscript:").
  const compact = String(href).replace(/[\u0000-\u0020\u007f-\u009f]/g, '');
  if (compact.startsWith('#')) return true;
  let url;
  try {
    url = new URL(compact, window.location.href);
  } catch {
    return false;
  }
  return SAFE_PROTOCOLS.has(url.protocol);
}

purify.addHook('afterSanitizeAttributes', (node) => {
  if (node.hasAttribute && node.hasAttribute('class')) {
    const kept = node.getAttribute('class').split(/\s+/).filter((c) => /^language-[\w+#.-]+$/.test(c) || c === 'image-link');
    if (kept.length) node.setAttribute('class', kept.join(' '));
    else node.removeAttribute('class');
  }
  if (node.tagName === 'A') {
    if (!isSafeHref(node.getAttribute('href'))) node.removeAttribute('href');
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer nofollow');
  } else if (node.tagName === 'INPUT') {
    // marked's task lists: keep a read-only checkbox and nothing else.
    node.setAttribute('type', 'checkbox');
    node.setAttribute('disabled', '');
  }
});

const PURIFY_CONFIG = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: [
    'style', 'form', 'button', 'textarea', 'select', 'option', 'img', 'picture', 'source',
    'video', 'audio', 'track', 'iframe', 'frame', 'object', 'embed', 'link', 'meta', 'base',
    'svg', 'math', 'template', 'dialog',
  ],
  FORBID_ATTR: ['style', 'id', 'name', 'srcset', 'action', 'formaction', 'xlink:href'],
  ALLOW_DATA_ATTR: false,
  ALLOWED_URI_REGEXP: /^(?:(?:https?|mailto):|[^a-z]|[a-z+.-]+(?:[^a-z+.\-:]|$))/i,
};

/** Sanitise an HTML string (e.g. marked's output) into inert markup. */
export function sanitize(html) {
  return purify.sanitize(html, PURIFY_CONFIG);
}

/** Render model markdown `text` into safe HTML (a string, for `innerHTML`). */
export function renderMarkdown(text) {
  return sanitize(marked.parse(text, { async: false }));
}
