// The few numbers that sum up a job's result, read from its report: what the job list's
// result columns and the compare view's headline show.

/**
 * {macsCut, speedup, accuracyChange, agreement, finalBytes, int8} from a report; a field
 * is null when the report does not have it (no data, no benchmark).
 */
export function resultSummary(report) {
  const o = report?.original || {};
  const p = report?.pruned || {};
  const q = report?.quantization;
  const hasAccuracy = typeof o.accuracy === 'number' && typeof p.accuracy === 'number';
  // With INT8 applied, model.onnx is the INT8 model: that is the size a user ships.
  const int8 = Boolean(q?.applied && typeof q.size_bytes?.int8 === 'number');
  return {
    macsCut: o.macs ? 1 - p.macs / o.macs : null,
    speedup: report?.ratios?.latency_speedup ?? null,
    accuracyChange: hasAccuracy ? p.accuracy - o.accuracy : null,
    agreement: report?.fidelity?.top1_agreement ?? null,
    finalBytes: int8 ? q.size_bytes.int8 : (p.size_bytes ?? null),
    int8,
  };
}

/**
 * The same summary from a job's `result` (the API keeps it beside the report, so the job
 * list needs no report); null when the job has none (not succeeded, or finished before
 * the service kept results).
 */
export function jobResultSummary(job) {
  const r = job?.result;
  if (!r || typeof r !== 'object') return null;
  const num = (x) => (typeof x === 'number' ? x : null);
  return {
    macsCut: num(r.macs_reduction),
    speedup: num(r.speedup),
    accuracyChange: num(r.accuracy_change),
    agreement: num(r.agreement),
    finalBytes: num(r.size_bytes),
    int8: Boolean(r.int8),
  };
}

/** The report's warnings ({code, message}), or none when it has no such field. */
export function warningsOf(report) {
  return Array.isArray(report?.warnings) ? report.warnings.filter((w) => w && typeof w === 'object') : [];
}
