"""The report's plain JavaScript (no library): draws the heatmap for the chosen token, layer and
view on a canvas over the image, the `<loc>` boxes, and the logit-lens table.

Maps arrive as base64 uint8, each g x g map scaled to its own max (see `report._u8`), laid out
C-order: mean / rollout [Y, T, g, g], pixel [T, g, g], head_maps [Y, N, T, g, g].
"""

SCRIPT = r"""
const D = JSON.parse(document.getElementById('data').textContent);
const bytes = s => Uint8Array.from(atob(s), c => c.charCodeAt(0));
const G = D.grid, GG = G * G, T = D.tokens.length, Y = D.layers;
const maps = {mean: bytes(D.mean), rollout: bytes(D.rollout)};
if (D.pixel) maps.pixel = bytes(D.pixel);
if (D.head_maps) maps.head = bytes(D.head_maps);
const img = new Image();
const cv = document.getElementById('heatmap'), ctx = cv.getContext('2d');
const el = id => document.getElementById(id);

function current() {
  const t = +el('token-slider').value, l = +el('layer-slider').value;
  const mode = (el('mode').value === 'head' && !maps.head) ? 'mean' : el('mode').value;  // too big to embed
  const h = Math.min(+el('head').value, Math.max(0, D.heads - 1));
  let off = 0, arr = maps.mean, vals = null;
  if (mode === 'mean') off = (l * T + t) * GG;
  else if (mode === 'rollout') { arr = maps.rollout; off = (l * T + t) * GG; }
  else if (mode === 'pixel') { arr = maps.pixel; off = t * GG; }
  else if (mode === 'head') { arr = maps.head; off = ((l * D.heads + h) * T + t) * GG; }
  else if (mode === 'occlusion') {
    const o = D.occlusion.flat(), top = Math.max(...o.map(Math.abs)) || 1;
    vals = {n: D.occlusion.length, v: o.map(x => Math.max(0, x) / top)};
  }
  if (!vals) vals = {n: G, v: Array.from(arr.slice(off, off + GG), x => x / 255)};
  return {t, l, mode, vals};
}

function draw() {
  const {t, l, mode, vals} = current();
  ctx.clearRect(0, 0, cv.width, cv.height);
  ctx.drawImage(img, 0, 0, cv.width, cv.height);
  const c = cv.width / vals.n;
  for (let i = 0; i < vals.n; i++) for (let j = 0; j < vals.n; j++) {
    ctx.fillStyle = `rgba(255,40,0,${0.75 * vals.v[i * vals.n + j]})`;
    ctx.fillRect(j * c, i * c, Math.ceil(c), Math.ceil(c));
  }
  ctx.strokeStyle = '#00e5ff'; ctx.lineWidth = 2; ctx.font = '14px sans-serif'; ctx.fillStyle = '#00e5ff';
  for (const b of D.boxes) {
    const [x0, y0, x1, y1] = b.box;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0); ctx.fillText(b.label, x0 + 2, y0 + 14);
  }
  drawScale(mode);
  el('token-label').textContent = `${t}: ${JSON.stringify(D.tokens[t])}`;
  el('layer-label').textContent = (mode === 'pixel' || mode === 'occlusion') ? 'all' : String(l);
  document.querySelectorAll('.tok').forEach((s, k) => s.classList.toggle('on', k === t));
  el('lens-token').textContent = `for token ${t} ${JSON.stringify(D.tokens[t])}`;
  const rows = D.lens[t].map((top, y) => '<tr><th>' + y + '</th>' + top.map(([s, p]) =>
    `<td>${s.replace(/&/g, '&amp;').replace(/</g, '&lt;')} <small>${p.toFixed(3)}</small></td>`).join('') + '</tr>');
  el('lens').innerHTML = '<tr><th>layer</th><th colspan="5">top-5 next token (probability)</th></tr>' + rows.join('');
}

// The colour scale under the heatmap: the overlay's alpha runs from 0 to this map's own max.
function drawScale(mode) {
  const sc = el('scale-bar'), sx = sc.getContext('2d');
  const grad = sx.createLinearGradient(0, 0, sc.width, 0);
  grad.addColorStop(0, 'rgba(255,40,0,0)'); grad.addColorStop(1, 'rgba(255,40,0,0.75)');
  sx.clearRect(0, 0, sc.width, sc.height); sx.fillStyle = grad; sx.fillRect(0, 0, sc.width, sc.height);
  el('scale-label').textContent = mode === 'occlusion' ? 'drop in the first token\'s logit'
    : mode === 'rollout' || mode === 'pixel' ? 'rollout weight on the patch' : 'attention weight on the patch';
  el('scale-max').textContent = mode === 'occlusion' ? 'largest drop' : "this map's max";
}

el('answer').textContent = D.text;
el('tokens').innerHTML = D.tokens.map((s, k) =>
  `<span class="tok" data-k="${k}">${s.replace(/&/g, '&amp;').replace(/</g, '&lt;')}</span>`).join('');
document.querySelectorAll('.tok').forEach(s => s.onclick = () => { el('token-slider').value = s.dataset.k; draw(); });
['token-slider', 'layer-slider', 'mode', 'head'].forEach(id => el(id).oninput = draw);
// A link may pick the view: report.html#mode=pixel&token=0&layer=3
const want = new URLSearchParams(location.hash.slice(1));
for (const [k, id] of [['mode', 'mode'], ['token', 'token-slider'], ['layer', 'layer-slider'], ['head', 'head']])
  if (want.get(k) !== null) el(id).value = want.get(k);
img.onload = draw;
img.src = D.image;
"""
