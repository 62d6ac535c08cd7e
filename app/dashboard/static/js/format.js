// Number, size, time and label formatting shared by the views.

const nf = new Intl.NumberFormat('en');

export function int(n) {
  return n === null || n === undefined ? '—' : nf.format(Math.round(n));
}

/** 1814073344 -> "1.81 G"; keeps `digits` significant digits (three by default). */
export function compact(n, digits = 3) {
  if (n === null || n === undefined) return '—';
  const units = [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']];
  for (const [size, unit] of units) {
    if (Math.abs(n) >= size) return `${(n / size).toPrecision(digits)} ${unit}`;
  }
  return String(Math.round(n));
}

/** An axis tick in compact form with the digits its spacing needs, so ticks stay distinct. */
export function compactTick(v, step) {
  if (!step || !v) return compact(v);
  return compact(v, Math.min(6, Math.max(3, Math.ceil(Math.log10(Math.abs(v) / step)) + 1)));
}

export function bytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

export function pct(x, digits = 1) {
  return x === null || x === undefined ? '—' : `${(x * 100).toFixed(digits)}%`;
}

export function ms(x) {
  if (x === null || x === undefined) return '—';
  return x < 10 ? `${x.toFixed(2)} ms` : `${x.toFixed(1)} ms`;
}

export function ratio(x) {
  return x === null || x === undefined ? '—' : `${x.toFixed(2)}×`;
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/**
 * RFC 3339 -> "27 Nov 10:00" in the viewer's time zone; the year only when it is not
 * this one, the seconds with `seconds`.
 */
export function date(iso, { seconds = false } = {}) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const p = (v) => String(v).padStart(2, '0');
  const year = d.getFullYear() === new Date().getFullYear() ? '' : ` ${d.getFullYear()}`;
  const time = `${p(d.getHours())}:${p(d.getMinutes())}${seconds ? `:${p(d.getSeconds())}` : ''}`;
  return `${d.getDate()} ${MONTHS[d.getMonth()]}${year} ${time}`;
}

/** Milliseconds -> "850 ms", "12.3 s", "4 min 05 s", "2 h 03 min". */
export function duration(msec) {
  if (msec === null || msec === undefined || Number.isNaN(msec)) return '—';
  if (msec < 1000) return `${Math.max(0, Math.round(msec))} ms`;
  const sec = msec / 1000;
  if (sec < 60) return `${sec.toFixed(1)} s`;
  const min = Math.floor(sec / 60);
  if (min < 60) return `${min} min ${String(Math.floor(sec % 60)).padStart(2, '0')} s`;
  return `${Math.floor(min / 60)} h ${String(min % 60).padStart(2, '0')} min`;
}

const TARGET_LABELS = {
  macs_reduction: 'MACs',
  params_reduction: 'params',
  channel_ratio: 'channels',
  latency_reduction: 'latency',
};

/** A job spec's target as "−50% MACs". */
export function target(spec) {
  const t = spec?.prune?.target || {};
  const kind = Object.keys(TARGET_LABELS).find((k) => t[k] !== null && t[k] !== undefined);
  if (!kind) return '—';
  return `−${Math.round(t[kind] * 1000) / 10}% ${TARGET_LABELS[kind]}`;
}

export function stageName(stage) {
  return stage ? stage.charAt(0).toUpperCase() + stage.slice(1) : '—';
}

/** 1 -> "1 epoch", 3 -> "3 epochs" (`many` for irregular plurals). */
export function plural(n, one, many = `${one}s`) {
  return `${n} ${Number(n) === 1 ? one : many}`;
}

/** "backbone.layer4.0.downsample.0" -> "backbone.la…downsample.0": both ends stay readable. */
export function elideMiddle(text, max) {
  if (text.length <= max) return text;
  const tail = Math.ceil((max - 1) / 2);
  return `${text.slice(0, max - 1 - tail)}…${text.slice(text.length - tail)}`;
}

/** A signed change in percentage points: 0.012 -> "+1.2 points". */
export function points(d, digits = 1) {
  if (d === null || d === undefined || Number.isNaN(d)) return '—';
  const v = Math.abs(d * 100).toFixed(digits);
  return `${d > 0 ? '+' : d < 0 ? '−' : '±'}${v} points`;
}
