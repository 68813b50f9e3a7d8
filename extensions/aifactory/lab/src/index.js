// aifactory's JupyterLab extension: runs in the person's browser. Everything it shows comes
// from its own session server (aifactory.lab.handlers, aifactory.notebook_jobs.handlers),
// which relays the allocations service's shared answers: no Slurm command per tab. Polling
// pauses while the tab is hidden. Text only ever goes in as textContent.

import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { ILabShell } from '@jupyterlab/application';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { Poll } from '@lumino/polling';
import { Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

const REFRESH_MS = 15000;
const PANEL_ID = 'aifactory-panel';
const settings = ServerConnection.makeSettings();

async function api(path, init = {}) {
  const url = URLExt.join(settings.baseUrl, 'aifactory/api', path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok || body === null) {
    const error = new Error((body && (body.message || body.error)) ||
      `this session's server answered ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// Same words as aifactory.lab.rules.duration.
export function duration(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  if (seconds < 60) {
    return `${seconds} s`;
  }
  const minutes = Math.floor(seconds / 60);
  const hours = Math.floor(minutes / 60);
  return hours ? `${hours} h ${String(minutes % 60).padStart(2, '0')} min` : `${minutes} min`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') {
      node.className = value;
    } else if (key === 'text') {
      node.textContent = value;
    } else {
      node.setAttribute(key, value);
    }
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child);
    }
  }
  return node;
}

function hubHome() {
  const prefix = PageConfig.getOption('hubPrefix') || '/hub/';
  return (PageConfig.getOption('hubHost') || '') + URLExt.join(prefix, 'home');
}

/** The session's status, refreshed from the server; the clock counts down in between. */
class Feed {
  constructor() {
    this.status = null;
    this.error = null; // this session's server did not answer
    this.failures = 0;
    this.receivedAt = 0;
    this.ending = null;
    this.changed = new Signal(this);
    this.ended = new Signal(this);
    this.poll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: REFRESH_MS, backoff: false },
      standby: () => (this.ending ? true : 'when-hidden'),
      name: 'aifactory:status'
    });
  }

  async refresh() {
    try {
      const status = await api('session');
      this.status = status;
      this.receivedAt = Date.now();
      this.error = null;
      this.failures = 0;
      if (status.ending) {
        this.end(status.ending);
      }
    } catch (e) {
      this.failures += 1;
      this.error = e.message;
      if (this.failures >= 2 && !this.ending) {
        this.end(this.guessedEnding());
      }
    }
    this.changed.emit();
  }

  secondsLeft() {
    const session = this.status && this.status.session;
    if (!session || session.time_left_s === null || session.time_left_s === undefined) {
      return null;
    }
    return Math.max(0, session.time_left_s - (Date.now() - this.receivedAt) / 1000);
  }

  guessedEnding() {
    // The server went without a word (its node failed, or the tab was hidden at the time).
    const left = this.secondsLeft();
    const job = this.status && this.status.session ? this.status.session.job_id : '';
    const why = left !== null && left < 90 ? 'reached its time limit' : 'no longer answers';
    return {
      job_id: job,
      state: null,
      text: `This session${job ? ` (Slurm job ${job})` : ''} ${why}; its server has stopped. ` +
        'Your files are kept in your home; start a new session from the hub.'
    };
  }

  end(ending) {
    if (this.ending) {
      return;
    }
    this.ending = ending;
    this.ended.emit(ending);
  }

  async waitForEnding() {
    // One long request at a time while the tab is visible: the server answers it the moment
    // Slurm signals it (scancel, the time limit, preemption), before it stops.
    while (!this.ending) {
      if (document.hidden) {
        await new Promise(resolve =>
          document.addEventListener('visibilitychange', resolve, { once: true }));
        continue;
      }
      try {
        const answer = await api('session/ending');
        if (answer.ending) {
          this.end(answer.ending);
          this.changed.emit();
        }
      } catch (e) {
        await new Promise(resolve => setTimeout(resolve, REFRESH_MS));
      }
    }
  }
}

function statusText(feed) {
  if (feed.ending) {
    return 'session ended';
  }
  if (feed.error && !feed.status) {
    return 'session server unreachable';
  }
  const status = feed.status;
  if (!status) {
    return 'aifactory…';
  }
  if (status.unreachable && !status.session) {
    return 'scheduler unreachable';
  }
  const parts = [];
  const left = feed.secondsLeft();
  if (left !== null) {
    parts.push(`${duration(left)} left`);
  }
  if (status.budget) {
    parts.push(`${status.budget.account}: ${status.budget.text} left`);
  }
  if (status.counts) {
    parts.push(`jobs: ${status.counts.running} running, ${status.counts.waiting} waiting`);
  }
  if (status.unreachable) {
    parts.push('scheduler unreachable');
  }
  return parts.join(' · ');
}

class StatusItem extends Widget {
  constructor(feed, open) {
    super({ node: el('div', { class: 'aif-status jp-StatusBar-TextItem', role: 'button' }) });
    this.id = 'aifactory-status';
    this.feed = feed;
    this.node.addEventListener('click', open);
    feed.changed.connect(() => this.render());
    this.render();
  }

  render() {
    this.node.textContent = statusText(this.feed);
    const status = this.feed.status;
    const lines = ['aifactory: click for your projects, jobs and free GPUs.'];
    if (status && status.as_of) {
      lines.push(`Slurm's numbers as of ${status.as_of}.`);
    }
    for (const w of (status && status.warnings) || []) {
      lines.push(w);
    }
    this.node.title = lines.join('\n');
    this.node.classList.toggle('aif-status-short',
      this.feed.secondsLeft() !== null && this.feed.secondsLeft() < 15 * 60);
  }
}

/** Notifications 15 and 5 minutes before the walltime, each once, with "Save all". */
class Clock {
  constructor(app, feed) {
    this.app = app;
    this.feed = feed;
    this.warned = new Set();
    setInterval(() => this.tick(), 5000);
    feed.changed.connect(() => this.tick());
  }

  tick() {
    const left = this.feed.secondsLeft();
    const status = this.feed.status;
    if (left === null || !status || this.feed.ending) {
      return;
    }
    const due = (status.warn_at_min || [15, 5]).filter(
      m => left <= m * 60 && !this.warned.has(m));
    if (!due.length) {
      return;
    }
    due.forEach(m => this.warned.add(m));
    const at = new Date(Date.now() + left * 1000).toLocaleTimeString([],
      { hour: '2-digit', minute: '2-digit' });
    Notification.warning(
      `This session ends in ${duration(left)} (at ${at}), when its Slurm job reaches its ` +
      'time limit: save your work.',
      {
        autoClose: false,
        actions: [{
          label: 'Save all',
          callback: () => this.app.commands.execute('docmanager:save-all')
        }]
      });
  }
}

class Banner extends Widget {
  constructor(ending) {
    super({ node: el('div', { class: 'aif-banner', role: 'alert' }) });
    this.id = 'aifactory-ended';
    this.node.append(el('span', { text: ending.text + ' ' }),
      el('a', { href: hubHome(), text: 'Go to the hub', target: '_top' }));
  }
}

/** Notebook jobs: a notification when one starts, ends or fails. */
class NotebookJobWatch {
  constructor() {
    this.states = null;
    this.changed = new Signal(this);
    this.poll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: 2 * REFRESH_MS, backoff: true, max: 300000 },
      standby: 'when-hidden',
      name: 'aifactory:notebook-jobs'
    });
    this.jobs = [];
  }

  async refresh() {
    const answer = await api('notebook-jobs');
    this.jobs = answer.jobs || [];
    const now = new Map(this.jobs.map(j => [j.id, j.state]));
    if (this.states) {
      for (const [id, state] of now) {
        // A job first seen now was made after this page opened: it was pending before.
        const before = this.states.has(id) ? this.states.get(id) : 'PENDING';
        if (before === state) {
          continue;
        }
        if (state === 'RUNNING') {
          Notification.info(`Notebook job ${id} has started.`, { autoClose: 8000 });
        } else if (state === 'COMPLETED') {
          Notification.success(`Notebook job ${id} has completed.`, { autoClose: false });
        } else if (!['PENDING', 'CONFIGURING', 'COMPLETING'].includes(state)) {
          Notification.error(`Notebook job ${id} ended: ${state.toLowerCase()}.`,
            { autoClose: false });
        }
      }
    }
    this.states = now;
    this.changed.emit();
  }
}

const ICON = new LabIcon({
  name: 'aifactory:clock',
  svgstr: '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16">' +
    '<g class="jp-icon3" stroke="#616161" stroke-width="2" style="fill:none">' +
    '<circle cx="12" cy="12" r="9"/><path d="M12 7v5l3 3"/></g></svg>'
});

function section(title, ...children) {
  return el('section', { class: 'aif-section' }, el('h3', { text: title }), ...children);
}

/** The side panel: session, projects, jobs (with stop), free GPUs, notebook jobs. */
class Panel extends Widget {
  constructor(feed, notebookJobs, labShell) {
    super({ node: el('div', { class: 'aif-panel' }) });
    this.id = PANEL_ID;
    this.title.icon = ICON;
    this.title.caption = 'aifactory: session, budgets, jobs, GPUs';
    this.feed = feed;
    this.notebookJobs = notebookJobs;
    this.labShell = labShell;
    this.content = el('div');
    this.form = new JobForm(labShell, () => notebookJobs.poll.refresh());
    this.node.append(this.content, this.form.node);
    feed.changed.connect(() => this.render());
    notebookJobs.changed.connect(() => this.render());
  }

  onAfterShow() {
    this.notebookJobs.poll.refresh();
    this.form.loadChoices();
    this.render();
  }

  render() {
    if (!this.isVisible) {
      return;
    }
    const status = this.feed.status;
    const parts = [];
    if (this.feed.ending) {
      parts.push(el('p', { class: 'aif-error', text: this.feed.ending.text }));
    } else if (this.feed.error) {
      parts.push(el('p', { class: 'aif-error', text: this.feed.error }));
    }
    for (const w of (status && status.warnings) || []) {
      parts.push(el('p', { class: 'aif-warning', text: w }));
    }
    if (status && status.session) {
      const s = status.session;
      const left = this.feed.secondsLeft();
      parts.push(section('This session',
        el('p', { text: `Slurm job ${s.job_id} on ${s.partition}` +
          (s.gpus ? `, ${s.gpus} ${s.gpu_type ? s.gpu_type.toUpperCase() + ' ' : ''}GPU${s.gpus > 1 ? 's' : ''}` : '') +
          `, project ${s.account}` + (left !== null ? `: ${duration(left)} left.` : '.') })));
    }
    if (status) {
      parts.push(section('Projects', ...(status.projects.length ? status.projects.map(p =>
        el('p', { class: 'aif-project', text: `${p.account} (${p.role}): ` +
          (p.remaining === null ? 'no limit' : `${p.remaining.toLocaleString()} ${p.unit} left`) +
          (p.granted ? ` of ${p.granted.toLocaleString()}` : '') +
          (p.exhaustion_date ? `; at this rate used up ${p.exhaustion_date.slice(0, 10)}` : '') })) :
        [el('p', { text: 'No project visible.' })])));
      parts.push(section('Jobs', ...(status.jobs.length ? status.jobs.map(j => this.jobRow(j)) :
        [el('p', { text: 'No other job of yours is queued or running.' })])));
      parts.push(section('Free GPUs', ...status.gpus.map(g =>
        el('p', { class: 'aif-gpus', text: `${g.partition}${g.gpu_type ? ' ' + g.gpu_type.toUpperCase() : ''}: ` +
          `${g.free} free of ${g.total}` + (g.down ? ` (${g.down} down)` : '') }))));
    }
    const nbJobs = this.notebookJobs.jobs;
    parts.push(section('Notebook jobs', ...(nbJobs.length ? nbJobs.slice(0, 15).map(j =>
      el('p', { class: 'aif-notebook-job', text: `${j.id}: ${j.state.toLowerCase()}` +
        (j.runs.length > 1 ? ` (${j.runs.length} runs)` : '') + ` — ${j.folder}` })) :
      [el('p', { text: 'None yet. Run the open notebook as a batch job below.' })])));
    // Only when something changed: a button being clicked is not swapped under the pointer.
    const html = parts.map(p => p.outerHTML).join('');
    if (html !== this.rendered) {
      this.rendered = html;
      this.content.replaceChildren(...parts);
    }
  }

  jobRow(job) {
    const words = `${job.job_id} ${job.name} (${job.kind}): ${job.state.toLowerCase()}` +
      (job.reason_text ? ` — ${job.reason_text}` : '') +
      (job.time_left_s !== null && job.time_left_s !== undefined ? `, ${duration(job.time_left_s)} left` : '');
    const stop = el('button', { class: 'jp-Button jp-mod-styled jp-mod-warn aif-stop', text: 'Stop' });
    stop.addEventListener('click', async () => {
      const result = await showDialog({
        title: `Stop job ${job.job_id}?`,
        body: `${job.name} (${job.kind}) will be cancelled.`,
        buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Stop' })]
      });
      if (!result.button.accept) {
        return;
      }
      try {
        await api(`jobs/${encodeURIComponent(job.job_id)}`, { method: 'DELETE' });
        Notification.info(`Job ${job.job_id} is being cancelled.`, { autoClose: 5000 });
      } catch (e) {
        Notification.error(e.message, { autoClose: false });
      }
      this.feed.poll.refresh();
    });
    return el('div', { class: 'aif-job', 'data-job-id': job.job_id }, el('span', { text: words }), stop);
  }
}

/** Run a notebook as a Slurm batch job, with the spawn form's choices (checked by the same
 * rules on the server): its parameters, then the cost and Slurm's start estimate first. */
class JobForm {
  constructor(labShell, onSubmitted) {
    this.labShell = labShell;
    this.onSubmitted = onSubmitted;
    this.choices = null;
    this.notebook = el('input', { class: 'aif-nb-path', placeholder: 'path/to/notebook.ipynb' });
    this.profile = el('select', { class: 'aif-nb-profile' });
    this.account = el('select', { class: 'aif-nb-account' });
    this.options = el('div', { class: 'aif-nb-options' });
    this.gpus = el('input', { class: 'aif-nb-gpus', type: 'number', min: '0' });
    this.walltime = el('input', { class: 'aif-nb-time', placeholder: 'HH:MM:SS' });
    this.params = el('div', { class: 'aif-nb-params' });
    this.result = el('div', { class: 'aif-nb-result' });
    const load = el('button', { class: 'jp-Button jp-mod-styled aif-nb-load', text: 'Parameters' });
    const preview = el('button', { class: 'jp-Button jp-mod-styled aif-nb-preview', text: 'Preview' });
    const submit = el('button', { class: 'jp-Button jp-mod-styled jp-mod-accept aif-nb-submit', text: 'Submit' });
    load.addEventListener('click', () => this.loadParameters());
    preview.addEventListener('click', () => this.send('notebook-jobs/preview'));
    submit.addEventListener('click', () => this.send('notebook-jobs'));
    this.profile.addEventListener('change', () => this.showProfile());
    this.node = section('Run a notebook as a batch job',
      el('label', { text: 'Notebook ' }, this.notebook), load, this.params,
      el('label', { text: 'Profile ' }, this.profile),
      el('label', { text: 'Project ' }, this.account), this.options,
      el('label', { text: 'GPUs ' }, this.gpus),
      el('label', { text: 'Time ' }, this.walltime),
      el('div', {}, preview, submit), this.result);
    if (labShell) {
      labShell.currentChanged.connect(() => this.follow());
    }
  }

  async loadChoices() {
    if (this.choices) {
      return;
    }
    try {
      this.choices = await api('notebook-jobs/choices');
    } catch (e) {
      this.result.replaceChildren(el('p', { class: 'aif-error', text: e.message }));
      return;
    }
    this.profile.replaceChildren(...this.choices.profiles.map(p =>
      el('option', { value: p.slug, text: p.display_name })));
    const chosen = this.choices.profiles.find(p => p.default) || this.choices.profiles[0];
    if (chosen) {
      this.profile.value = chosen.slug;
    }
    this.account.replaceChildren(...this.choices.accounts.map(a => el('option', { value: a, text: a })));
    this.account.value = this.choices.default_account;
    this.showProfile();
  }

  current() {
    return this.choices && this.choices.profiles.find(p => p.slug === this.profile.value);
  }

  showProfile() {
    const profile = this.current();
    if (!profile) {
      return;
    }
    this.options.replaceChildren(...profile.options.map(o => {
      const select = el('select', { class: 'aif-nb-option', 'data-name': o.name });
      select.replaceChildren(...o.choices.map(c => el('option', { value: c.key, text: c.display_name })));
      select.value = (o.choices.find(c => c.default) || o.choices[0]).key;
      return el('label', { text: `${o.display_name} ` }, select);
    }));
    this.gpus.value = String(profile.gpus);
    this.walltime.value = profile.walltime;
    this.gpus.disabled = profile.fixed.includes('gpus');
    this.walltime.disabled = profile.fixed.includes('walltime') ||
      profile.options.some(o => o.name === 'walltime');
  }

  follow() {
    const widget = this.labShell.currentWidget;
    const path = widget && widget.context && widget.context.path;
    if (path && path.endsWith('.ipynb') && path !== this.notebook.value) {
      this.notebook.value = path;
      this.params.replaceChildren();
    }
  }

  async loadParameters() {
    try {
      const answer = await api(`notebook-jobs/parameters?notebook=${encodeURIComponent(this.notebook.value)}`);
      this.params.replaceChildren(...answer.parameters.map(p => el('label', { text: `${p.name} (${p.type}) ` },
        el('input', { class: 'aif-nb-param', 'data-name': p.name, 'data-type': p.type, value: String(p.default) }))));
      if (!answer.parameters.length) {
        this.params.replaceChildren(el('p', { text: 'This notebook has no parameters cell.' }));
      }
    } catch (e) {
      this.result.replaceChildren(el('p', { class: 'aif-error', text: e.message }));
    }
  }

  body() {
    const parameters = {};
    for (const input of this.params.querySelectorAll('input.aif-nb-param')) {
      parameters[input.dataset.name] = input.value; // checked against the declared type there
    }
    const settings = {};
    const profile = this.current();
    if (profile) {
      settings.profile = profile.slug;
      // Only what the person changed: the rest is the profile's (as on the spawn form).
      if (this.account.value && this.account.value !== this.choices.default_account) {
        settings.account = this.account.value;
      }
      for (const select of this.options.querySelectorAll('select.aif-nb-option')) {
        settings[`option_${select.dataset.name}`] = select.value;
      }
      if (!this.gpus.disabled && this.gpus.value !== String(profile.gpus)) {
        settings.gpus = this.gpus.value;
      }
      if (!this.walltime.disabled && this.walltime.value !== profile.walltime) {
        settings.walltime = this.walltime.value;
      }
    }
    return { notebook: this.notebook.value, settings, parameters };
  }

  async send(path) {
    this.result.replaceChildren(el('p', { text: 'Asking Slurm…' }));
    try {
      const answer = await api(path, { method: 'POST', body: JSON.stringify(this.body()) });
      if (path.endsWith('preview')) {
        this.result.replaceChildren(
          el('p', { class: 'aif-nb-cost', text: answer.cost_text }),
          answer.budget_note ? el('p', { text: answer.budget_note }) : null,
          el('p', { class: 'aif-nb-start', text: answer.start_text }),
          el('details', {}, el('summary', { text: 'The job script' }),
            el('pre', { class: 'aif-nb-script', text: answer.script })));
      } else {
        this.result.replaceChildren(el('p', { class: 'aif-nb-submitted', 'data-id': answer.id,
          text: `Submitted: notebook job ${answer.id} (Slurm job ${answer.slurm_job_id}); ` +
            `its output notebook will be in ${answer.folder}.` }));
        this.onSubmitted();
      }
    } catch (e) {
      this.result.replaceChildren(el('p', { class: 'aif-error', text: e.message }));
    }
  }
}

const plugin = {
  id: 'aifactory-jupyterlab:plugin',
  description: "The session's clock, budget and jobs in the status bar and a side panel.",
  autoStart: true,
  optional: [IStatusBar, ILabShell],
  activate: (app, statusBar, labShell) => {
    const feed = new Feed();
    const notebookJobs = new NotebookJobWatch();
    const panel = new Panel(feed, notebookJobs, labShell);
    app.shell.add(panel, 'right', { rank: 900 });
    if (statusBar) {
      const item = new StatusItem(feed, () => app.shell.activateById(PANEL_ID));
      statusBar.registerStatusItem('aifactory:status', { item, align: 'left', rank: 0 });
    }
    new Clock(app, feed);
    feed.ended.connect((_, ending) => {
      Widget.attach(new Banner(ending), document.body); // above everything, full width
      Notification.error(ending.text, { autoClose: false });
    });
    feed.waitForEnding();
  }
};

export default plugin;
