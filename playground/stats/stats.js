// Polls /metrics (Prometheus text format) and plots what an operator asks first. No build, no library: the
// quantiles come from the histograms' bucket counts over the last poll interval, as Prometheus' histogram_quantile.

const POLL_MS = Number(new URLSearchParams(location.search).get("poll_ms")) || 2000;
const KEEP = 90; // points per chart
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

/** Samples of the text format: [{name, labels, value}]. */
export function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[3] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    samples.push({ name: match[1], labels, value: Number(match[4]) });
  }
  return samples;
}

const sum = (samples, name, keep = () => true) =>
  samples.filter((s) => s.name === name && keep(s.labels)).reduce((total, s) => total + s.value, 0);

/** Cumulative bucket counts by upper bound, summed over every label set. */
function buckets(samples, metric) {
  const byBound = new Map();
  for (const s of samples) {
    if (s.name !== `${metric}_bucket`) continue;
    const bound = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    byBound.set(bound, (byBound.get(bound) || 0) + s.value);
  }
  return [...byBound.entries()].sort((a, b) => a[0] - b[0]);
}

/** histogram_quantile over the increase between two scrapes (or everything, with no earlier scrape). */
export function quantile(q, now, before) {
  const earlier = new Map(before || []);
  const counts = now.map(([bound, count]) => [bound, count - (earlier.get(bound) || 0)]);
  const total = counts.length ? counts[counts.length - 1][1] : 0;
  if (total <= 0) return null;
  const rank = q * total;
  let lowerBound = 0, lowerCount = 0;
  for (const [bound, count] of counts) {
    if (count >= rank) {
      if (bound === Infinity) return lowerBound;
      return lowerBound + (bound - lowerBound) * ((rank - lowerCount) / Math.max(count - lowerCount, 1e-12));
    }
    lowerBound = bound; lowerCount = count;
  }
  return lowerBound;
}

const series = {}; // chart id → {label → [values]}
function push(chart, label, value) {
  const lines = (series[chart] ||= {});
  const points = (lines[label] ||= []);
  points.push(value);
  if (points.length > KEEP) points.shift();
}

function draw(chart) {
  const canvas = document.getElementById(`${chart}-chart`);
  const ratio = window.devicePixelRatio || 1;
  canvas.width = canvas.clientWidth * ratio;
  canvas.height = canvas.clientHeight * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  const width = canvas.clientWidth, height = canvas.clientHeight;
  const lines = Object.entries(series[chart] || {});
  const values = lines.flatMap(([, points]) => points.filter((v) => v !== null));
  const top = Math.max(...values, 1e-9) * 1.1;
  ctx.clearRect(0, 0, width, height);
  ctx.strokeStyle = "#eee";
  ctx.beginPath(); ctx.moveTo(0, height - 0.5); ctx.lineTo(width, height - 0.5); ctx.stroke();
  ctx.font = "11px system-ui"; ctx.fillStyle = "#888"; ctx.fillText(format(top), 2, 11);
  lines.forEach(([label, points], i) => {
    ctx.strokeStyle = ctx.fillStyle = COLORS[i % COLORS.length];
    ctx.beginPath();
    let drawing = false;
    points.forEach((v, x) => {
      if (v === null) { drawing = false; return; }
      const px = (x / (KEEP - 1)) * width, py = height - (v / top) * (height - 14);
      drawing ? ctx.lineTo(px, py) : ctx.moveTo(px, py);
      drawing = true;
    });
    ctx.stroke();
    ctx.fillText(label, width - 8 - 90 * (lines.length - i), 11);
  });
}

const format = (v) => (v === null || v === undefined ? "–" : Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3));

let previous = null; // {at, samples}
async function poll() {
  const status = document.getElementById("status");
  try {
    const response = await fetch("/metrics", { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) throw new Error(`/metrics answered ${response.status}`);
    const samples = parseMetrics(await response.text());
    const at = performance.now();
    const old = previous?.samples;
    const ttft = buckets(samples, "gen_ai_server_time_to_first_token_seconds");
    const ttftBefore = old && buckets(old, "gen_ai_server_time_to_first_token_seconds");
    const p50 = quantile(0.5, ttft, ttftBefore), p99 = quantile(0.99, ttft, ttftBefore);
    push("ttft", "p50", p50); push("ttft", "p99", p99);
    document.getElementById("ttft").textContent = `p50 ${format(p50)} · p99 ${format(p99)}`;

    const tpot = quantile(0.99, buckets(samples, "gen_ai_server_time_per_output_token_seconds"),
      old && buckets(old, "gen_ai_server_time_per_output_token_seconds"));
    const longest = quantile(0.99, buckets(samples, "chains_stream_longest_gap_seconds"),
      old && buckets(old, "chains_stream_longest_gap_seconds"));
    push("gap", "per token", tpot); push("gap", "longest", longest);
    document.getElementById("gap").textContent = `time per token p99 ${format(tpot)} · longest gap p99 ${format(longest)}`;

    const output = (s) => sum(s, "gen_ai_client_token_usage_sum", (l) => l.token_type === "output");
    const tps = old ? Math.max(0, output(samples) - output(old)) / ((at - previous.at) / 1000) : 0;
    push("tps", "tokens/s", tps);
    document.getElementById("tps").textContent = `${format(tps)} tokens/s · ${output(samples)} in all`;

    const open = sum(samples, "chains_streams_open");
    push("open", "open", open);
    document.getElementById("open").textContent = `${open} open`;

    const endings = {};
    for (const s of samples) {
      if (s.name === "chains_stream_endings_total") endings[s.labels.ending] = (endings[s.labels.ending] || 0) + s.value;
    }
    for (const [ending, count] of Object.entries(endings)) push("endings", ending, count);
    document.getElementById("endings").textContent =
      Object.entries(endings).map(([ending, count]) => `${ending} ${count}`).join(" · ") || "none yet";

    for (const chart of ["ttft", "gap", "tps", "open", "endings"]) draw(chart);
    previous = { at, samples };
    status.className = "";
    status.textContent = `updated ${new Date().toLocaleTimeString()} · every ${POLL_MS / 1000} s`;
  } catch (error) {
    status.className = "error";
    status.textContent = `cannot read /metrics: ${error.message}`;
  }
}

poll();
setInterval(poll, POLL_MS);
