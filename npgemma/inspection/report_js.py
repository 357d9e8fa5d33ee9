"""The report's plain JavaScript (no library): draws the heatmap for the chosen token, layer and
view on a canvas over the dimmed image, the `<loc>` boxes, the colour bar and the logit-lens table.

Maps arrive as base64 uint8, each g x g map scaled to its own max (see `report._u8`; the maxima
in *_top), laid out C-order: mean / rollout [Y, T, g, g], pixel [T, g, g], head_maps
[Y, N, T, g, g]. The colour map is Python's (`D.colormap`: 256 x [r, g, b, alpha·1000]).
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
  let off = 0, arr = maps.mean, vals = null, top = 0;
  if (mode === 'mean') { off = (l * T + t) * GG; top = D.mean_top[l][t]; }
  else if (mode === 'rollout') { arr = maps.rollout; off = (l * T + t) * GG; top = D.rollout_top[l][t]; }
  else if (mode === 'pixel') { arr = maps.pixel; off = t * GG; top = D.pixel_top[t]; }
  else if (mode === 'head') { arr = maps.head; off = ((l * D.heads + h) * T + t) * GG; top = D.head_top[l][h][t]; }
  else if (mode === 'occlusion') {
    const o = D.occlusion.flat();
    top = Math.max(...o.map(Math.abs)) || 1;
    vals = {n: D.occlusion.length, v: o.map(x => Math.max(0, x) / top)};
  }
  if (!vals) vals = {n: G, v: Array.from(arr.slice(off, off + GG), x => x / 255)};
  return {t, l, mode, vals, top};
}

const heat = v => D.colormap[Math.max(0, Math.min(255, Math.round(v * 255)))];
const fmt = x => x === 0 ? '0' : Math.abs(x) >= 0.01 ? x.toPrecision(3).replace(/\.?0+$/, '') : x.toExponential(1);

function draw() {
  const {t, l, mode, vals, top} = current();
  ctx.clearRect(0, 0, cv.width, cv.height);
  ctx.drawImage(img, 0, 0, cv.width, cv.height);  // the image in dimmed grey: the heat is the only colour
  const c = cv.width / vals.n;
  for (let i = 0; i < vals.n; i++) for (let j = 0; j < vals.n; j++) {
    const [r, g, b, a] = heat(vals.v[i * vals.n + j]);
    ctx.fillStyle = `rgba(${r},${g},${b},${a / 1000})`;
    ctx.fillRect(j * c, i * c, Math.ceil(c), Math.ceil(c));
  }
  ctx.lineWidth = 3; ctx.font = 'bold 14px sans-serif'; ctx.textBaseline = 'top';
  for (const b of D.boxes) {
    const [x0, y0, x1, y1] = b.box;
    ctx.strokeStyle = '#141414'; ctx.lineWidth = 5; ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.strokeStyle = b.color; ctx.lineWidth = 3; ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    const w = ctx.measureText(b.label).width + 8, ly = y0 >= 20 ? y0 - 20 : y0 + 2;
    ctx.fillStyle = b.color; ctx.fillRect(x0, ly, w, 19);
    ctx.strokeStyle = '#141414'; ctx.lineWidth = 1; ctx.strokeRect(x0, ly, w, 19);
    ctx.fillStyle = b.text_color; ctx.fillText(b.label, x0 + 4, ly + 3);
  }
  drawScale(mode, top);
  el('mode-help').textContent = D.explain[mode];
  el('token-label').textContent = `${t}: ${JSON.stringify(D.tokens[t])}`;
  el('layer-label').textContent = (mode === 'pixel' || mode === 'occlusion') ? 'all' : String(l);
  document.querySelectorAll('.tok').forEach((s, k) => s.classList.toggle('on', k === t));
  el('lens-token').textContent = `for token ${t} ${JSON.stringify(D.tokens[t])}`;
  const rows = D.lens[t].map((top, y) => '<tr><th>' + y + '</th>' + top.map(([s, p]) =>
    `<td>${s.replace(/&/g, '&amp;').replace(/</g, '&lt;')} <small>${p.toFixed(3)}</small></td>`).join('') + '</tr>');
  el('lens').innerHTML = '<tr><th>layer</th><th colspan="5">top-5 next token (probability)</th></tr>' + rows.join('');
}

// The colour bar: the heat colours as they look over mid-grey, numbered 0 .. this map's max.
function drawScale(mode, top) {
  const sc = el('scale-bar'), sx = sc.getContext('2d');
  for (let x = 0; x < sc.width; x++) {
    const [r, g, b, a] = heat(x / (sc.width - 1)), k = a / 1000;
    sx.fillStyle = `rgb(${128 * (1 - k) + r * k},${128 * (1 - k) + g * k},${128 * (1 - k) + b * k})`;
    sx.fillRect(x, 0, 1, sc.height);
  }
  el('scale-mid').textContent = fmt(top / 2);
  el('scale-max').textContent = fmt(top);
  el('scale-label').textContent = mode === 'occlusion' ? 'drop in the first token\'s logit when the cell is greyed'
    : mode === 'rollout' || mode === 'pixel' ? 'rollout weight on the patch' : 'attention weight on the patch';
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
img.src = D.dimmed;
"""
