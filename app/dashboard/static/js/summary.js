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

/** The report's warnings ({code, message}), or none when it has no such field. */
export function warningsOf(report) {
  return Array.isArray(report?.warnings) ? report.warnings.filter((w) => w && typeof w === 'object') : [];
}
