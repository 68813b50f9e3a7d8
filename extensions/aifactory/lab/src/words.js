// Words the extension writes itself, the same as aifactory.lab.rules writes them (plain
// functions without imports: tests/test_lab_extension.py runs them with node).

export function duration(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  if (seconds < 60) {
    return `${seconds} s`;
  }
  const minutes = Math.floor(seconds / 60);
  const hours = Math.floor(minutes / 60);
  return hours ? `${hours} h ${String(minutes % 60).padStart(2, '0')} min` : `${minutes} min`;
}

// Notebook-job states worth a notification: started, and each way of ending for good
// ("ENDED" is the moment between the queue and accounting; the rest are still alive).
export const STARTED = 'RUNNING';
export const ENDED_WELL = 'COMPLETED';
export const ENDED_BADLY = ['FAILED', 'TIMEOUT', 'CANCELLED', 'OUT_OF_MEMORY', 'NODE_FAIL',
  'PREEMPTED', 'BOOT_FAIL', 'DEADLINE'];

export function notebookJobNews(id, before, state) {
  if (before === state) {
    return null;
  }
  if (state === STARTED && ['PENDING', 'CONFIGURING'].includes(before)) {
    return { kind: 'info', text: `Notebook job ${id} has started.` };
  }
  if (state === ENDED_WELL) {
    return { kind: 'success', text: `Notebook job ${id} has completed.` };
  }
  if (ENDED_BADLY.includes(state)) {
    return { kind: 'error', text: `Notebook job ${id} ended: ${state.toLowerCase().replace(/_/g, ' ')}.` };
  }
  return null;
}
