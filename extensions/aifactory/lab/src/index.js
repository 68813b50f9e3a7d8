// aifactory's JupyterLab extension: runs in the person's browser. Everything it shows comes
// from its own session server (aifactory.lab.handlers, aifactory.notebook_jobs.handlers),
// which relays the allocations service's shared answers: no Slurm command per tab. Polling
// pauses while the tab is hidden. Text only ever goes in as textContent.

import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { ILabShell } from '@jupyterlab/application';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { CommandToolbarButton, LabIcon } from '@jupyterlab/ui-components';
import { Poll } from '@lumino/polling';
import { Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { duration, notebookJobNews } from './words';

const REFRESH_MS = 15000;
const PANEL_ID = 'aifactory-panel';
const RUN_AS_JOB = 'aifactory:run-as-batch-job';
// The hub answers 424 for a server that is not running (503 with its legacy setting).
const NOT_RUNNING = [424, 503];
const settings = ServerConnection.makeSettings();
// One tab of this session waits for the server's last word; it tells the others.
const ENDING_LOCK = `aifactory-ending:${settings.baseUrl}`;

async function api(path, init = {}) {
  const url = URLExt.join(settings.baseUrl, 'aifactory/api', path);
  let response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (e) {
    const error = new Error("this session's server does not answer");
    error.status = 0;
    throw error;
  }
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

function sleep(ms) {
  return new Promise(resolve => setTimeout(resolve, ms));
}

function visible() {
  return document.hidden ? new Promise(resolve =>
    document.addEventListener('visibilitychange', resolve, { once: true })) : Promise.resolve();
}

function hubHome() {
  const prefix = PageConfig.getOption('hubPrefix') || '/hub/';
  return (PageConfig.getOption('hubHost') || '') + URLExt.join(prefix, 'home');
}

/** The session's status, refreshed from the server; the clock counts down in between. */
class Feed {
  constructor() {
    this.status = null;
    this.error = null; // this session's server did not answer the last refresh
    this.notRunning = 0; // refreshes in a row the hub answered "not running"
    this.receivedAt = 0;
    this.ending = null;
    this.changed = new Signal(this);
    this.ended = new Signal(this);
    this.channel = typeof BroadcastChannel === 'undefined' ? null :
      new BroadcastChannel(ENDING_LOCK);
    if (this.channel) {
      this.channel.onmessage = event => this.end(event.data);
    }
    this.poll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: REFRESH_MS, backoff: true, max: 120000 },
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
      this.notRunning = 0;
      if (status.ending) {
        this.end(status.ending);
      }
    } catch (e) {
      this.error = e.message;
      // Only the hub's own "not running", twice: a dropped network or a proxy hiccup is not
      // the end of the session (the poll backs off and the next answer clears the error).
      this.notRunning = NOT_RUNNING.includes(e.status) ? this.notRunning + 1 : 0;
      if (this.notRunning >= 2) {
        this.end(this.guessedEnding());
      }
      this.changed.emit();
      throw e; // the poll backs off
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
    // The server went without a word (its node failed, or no tab was visible at the time).
    const left = this.secondsLeft();
    const job = this.status && this.status.session ? this.status.session.job_id : '';
    const what = `This session${job ? ` (Slurm job ${job})` : ''}`;
    const why = left !== null && left < 90 ? 'reached its time limit' : 'has ended';
    return {
      job_id: job,
      state: null,
      short: `${what} ${why}.`,
      text: `${what} ${why}; its server has stopped. Your files are kept in your home; ` +
        'start a new session from the hub.'
    };
  }

  end(ending) {
    if (this.ending || !ending) {
      return;
    }
    this.ending = ending;
    this.ended.emit(ending);
    this.changed.emit();
  }

  async watchForEnding() {
    // The server answers this request the moment Slurm signals it (scancel, the time limit,
    // preemption), before it stops. One visible tab of the session holds it at a time.
    while (!this.ending) {
      await visible();
      const hold = async () => {
        while (!this.ending && !document.hidden) {
          try {
            const answer = await api('session/ending');
            if (answer.ending) {
              if (this.channel) {
                this.channel.postMessage(answer.ending);
              }
              this.end(answer.ending);
            }
          } catch (e) {
            await sleep(REFRESH_MS);
          }
        }
      };
      if (navigator.locks) {
        await navigator.locks.request(ENDING_LOCK, hold);
      } else {
        await hold();
      }
    }
  }
}

function statusText(feed) {
  if (feed.ending) {
    return 'session ended';
  }
  const status = feed.status;
  if (!status) {
    return feed.error ? "session server not answering" : 'aifactory…';
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
  if (feed.error) {
    parts.push('session server not answering');
  } else if (status.unreachable) {
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
    setInterval(() => this.render(), 20000); // the clock between refreshes
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
    const left = this.feed.secondsLeft();
    this.node.classList.toggle('aif-status-short', left !== null && left < 15 * 60);
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
      `This session ends in ${duration(left)} (at ${at}): save your work.`,
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
    this.jobs = [];
    this.poll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: 2 * REFRESH_MS, backoff: true, max: 300000 },
      standby: 'when-hidden',
      name: 'aifactory:notebook-jobs'
    });
  }

  async refresh() {
    const answer = await api('notebook-jobs');
    this.jobs = answer.jobs || [];
    const now = new Map(this.jobs.map(j => [j.id, j.state]));
    if (this.states) {
      for (const [id, state] of now) {
        // A job first seen now was made after this page opened: it was pending before.
        const news = notebookJobNews(id, this.states.has(id) ? this.states.get(id) : 'PENDING',
          state);
        if (news) {
          Notification[news.kind](news.text, { autoClose: news.kind === 'info' ? 8000 : false });
        }
      }
    }
    // A job in between (ENDED: left the queue, not yet in accounting) keeps its last state.
    this.states = new Map([...now].map(([id, state]) =>
      [id, state === 'ENDED' && this.states ? (this.states.get(id) || state) : state]));
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

/** A part of the panel redrawn only when its content changed. */
class Part {
  constructor() {
    this.node = el('div');
    this.drawn = null;
  }

  show(...children) {
    const html = children.map(c => c.outerHTML).join('');
    if (html !== this.drawn) {
      this.drawn = html;
      this.node.replaceChildren(...children);
    }
  }
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
    this.top = new Part();
    this.after = new Part();
    this.notebooks = new Part();
    // Job rows stay the same elements while their job is listed: a Stop button is never
    // swapped under the pointer when the time left changes.
    this.jobRows = new Map();
    this.jobList = el('div', { class: 'aif-jobs' });
    this.form = new JobForm(labShell, () => notebookJobs.poll.refresh());
    this.node.append(this.top.node, section('Jobs', this.jobList), this.after.node,
      this.notebooks.node, this.form.node);
    feed.changed.connect(() => this.render());
    notebookJobs.changed.connect(() => this.render());
  }

  onAfterShow() {
    this.notebookJobs.poll.refresh();
    this.form.loadChoices();
    this.form.follow();
    this.render();
  }

  render() {
    if (!this.isVisible) {
      return;
    }
    const status = this.feed.status;
    const top = [];
    if (this.feed.ending) {
      top.push(el('p', { class: 'aif-error', text: this.feed.ending.text }));
    } else if (this.feed.error) {
      top.push(el('p', { class: 'aif-error', text: this.feed.error }));
    }
    for (const w of (status && status.warnings) || []) {
      top.push(el('p', { class: 'aif-warning', text: w }));
    }
    if (status && status.session) {
      const s = status.session;
      const left = this.feed.secondsLeft();
      const gpus = s.gpus ? `, ${s.gpus} ${s.gpu_type ? s.gpu_type.toUpperCase() + ' ' : ''}` +
        `GPU${s.gpus > 1 ? 's' : ''}` : '';
      top.push(section('This session', el('p', { text: `Slurm job ${s.job_id} on ` +
        `${s.partition}${gpus}, project ${s.account}` +
        (left !== null ? `: ${duration(left)} left.` : '.') })));
    }
    if (status) {
      top.push(section('Projects', ...(status.projects.length ? status.projects.map(p =>
        el('p', { class: 'aif-project', text: `${p.account} (${p.role}): ` +
          (p.remaining === null ? 'no limit' : `${p.remaining.toLocaleString()} ${p.unit} left`) +
          (p.granted ? ` of ${p.granted.toLocaleString()}` : '') +
          (p.exhaustion_date ? `; at this rate used up ${p.exhaustion_date.slice(0, 10)}` : '') })) :
        [el('p', { text: 'No project visible.' })])));
      this.after.show(section('Free GPUs', ...status.gpus.map(g =>
        el('p', { class: 'aif-gpus', text: `${g.partition}${g.gpu_type ? ' ' + g.gpu_type.toUpperCase() : ''}: ` +
          `${g.free} free of ${g.total}` + (g.down ? ` (${g.down} down)` : '') }))));
      this.showJobs(status.jobs);
    }
    this.top.show(...top);
    const nbJobs = this.notebookJobs.jobs;
    this.notebooks.show(section('Notebook jobs', ...(nbJobs.length ? nbJobs.slice(0, 15).map(j =>
      el('p', { class: 'aif-notebook-job', text: `${j.id}: ${j.state.toLowerCase()}` +
        (j.runs.length > 1 ? ` (${j.runs.length} runs)` : '') + ` — ${j.folder}` })) :
      [el('p', { text: 'None yet. Run a notebook as a batch job below.' })])));
  }

  showJobs(jobs) {
    const listed = new Set(jobs.map(j => j.job_id));
    for (const [id, row] of this.jobRows) {
      if (!listed.has(id)) {
        row.node.remove();
        this.jobRows.delete(id);
      }
    }
    for (const job of jobs) {
      let row = this.jobRows.get(job.job_id);
      if (!row) {
        row = this.jobRow(job.job_id);
        this.jobRows.set(job.job_id, row);
        this.jobList.append(row.node);
      }
      row.job = job;
      row.words.textContent = `${job.job_id} ${job.name} (${job.kind}): ${job.state.toLowerCase()}` +
        (job.reason_text ? ` — ${job.reason_text}` : '') +
        (job.time_left_s !== null && job.time_left_s !== undefined ? `, ${duration(job.time_left_s)} left` : '');
    }
    this.jobList.classList.toggle('aif-empty', !jobs.length);
  }

  jobRow(jobId) {
    const words = el('span');
    const stop = el('button', { class: 'jp-Button jp-mod-styled jp-mod-warn aif-stop', text: 'Stop' });
    const row = { node: el('div', { class: 'aif-job', 'data-job-id': jobId }, words, stop), words, job: null };
    stop.addEventListener('click', async () => {
      const job = row.job;
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
    return row;
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
    // Another notebook's parameters are not this one's.
    this.notebook.addEventListener('input', () => this.params.replaceChildren());
    this.node = section('Run a notebook as a batch job',
      el('label', { text: 'Notebook ' }, this.notebook), load, this.params,
      el('label', { text: 'Profile ' }, this.profile),
      el('label', { text: 'Project ' }, this.account), this.options,
      el('label', { text: 'GPUs ' }, this.gpus),
      this.walltimeLabel = el('label', { text: 'Time ' }, this.walltime),
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
    this.showProfile();
  }

  current() {
    return this.choices && this.choices.profiles.find(p => p.slug === this.profile.value);
  }

  accountOf(profile) {
    return profile.account || this.choices.default_account;
  }

  showProfile() {
    const profile = this.current();
    if (!profile) {
      return;
    }
    // The profile's own account (a course's) first; it is the only one when fixed.
    const accounts = profile.fixed.includes('account') ? [this.accountOf(profile)] :
      [...new Set([this.accountOf(profile), ...this.choices.accounts])];
    this.account.replaceChildren(...accounts.map(a => el('option', { value: a, text: a })));
    this.account.value = this.accountOf(profile);
    this.account.disabled = profile.fixed.includes('account');
    this.options.replaceChildren(...profile.options.map(o => {
      const select = el('select', { class: 'aif-nb-option', 'data-name': o.name });
      select.replaceChildren(...o.choices.map(c => el('option', { value: c.key, text: c.display_name })));
      select.value = (o.choices.find(c => c.default) || o.choices[0]).key;
      return el('label', { text: `${o.display_name} ` }, select);
    }));
    this.gpus.value = String(profile.gpus);
    this.walltime.value = profile.walltime;
    this.gpus.disabled = profile.fixed.includes('gpus');
    const timeOption = profile.options.some(o => o.name === 'walltime');
    this.walltime.disabled = profile.fixed.includes('walltime') || timeOption;
    this.walltimeLabel.style.display = timeOption ? 'none' : ''; // the option says it
  }

  /** Fill in this notebook and its parameters (the toolbar button, the file's menu). */
  use(path) {
    this.notebook.value = path;
    this.params.replaceChildren();
    this.loadParameters();
    this.node.scrollIntoView({ block: 'start' });
  }

  follow() {
    const widget = this.labShell && this.labShell.currentWidget;
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
      if (!this.account.disabled && this.account.value !== this.accountOf(profile)) {
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
  optional: [IStatusBar, ILabShell, INotebookTracker, IDefaultFileBrowser],
  activate: (app, statusBar, labShell, notebooks, fileBrowser) => {
    const feed = new Feed();
    const notebookJobs = new NotebookJobWatch();
    const panel = new Panel(feed, notebookJobs, labShell);
    app.shell.add(panel, 'right', { rank: 900 });
    if (statusBar) {
      const item = new StatusItem(feed, () => app.shell.activateById(PANEL_ID));
      statusBar.registerStatusItem('aifactory:status', { item, align: 'left', rank: 0 });
    }
    new Clock(app, feed);
    // "Run as a batch job": on each notebook's toolbar, and on a notebook in the file browser.
    app.commands.addCommand(RUN_AS_JOB, {
      label: 'Run as a batch job…',
      caption: 'Run this notebook as a Slurm batch job of its own (aifactory)',
      icon: ICON,
      execute: args => {
        let path = args.path;
        if (!path && args.fromBrowser && fileBrowser) {
          const item = fileBrowser.selectedItems().next();
          path = item && item.value ? item.value.path : null;
        }
        if (!path && notebooks && notebooks.currentWidget) {
          path = notebooks.currentWidget.context.path;
        }
        app.shell.activateById(PANEL_ID);
        if (path) {
          panel.form.use(path);
        }
      }
    });
    if (notebooks) {
      notebooks.widgetAdded.connect((_, notebook) => {
        const button = new CommandToolbarButton({ commands: app.commands, id: RUN_AS_JOB, label: 'Run as job' });
        button.addClass('aif-run-as-job');
        if (!notebook.toolbar.insertAfter('cellType', 'aifactory-run-as-job', button)) {
          notebook.toolbar.addItem('aifactory-run-as-job', button);
        }
      });
    }
    app.contextMenu.addItem({
      command: RUN_AS_JOB, args: { fromBrowser: true },
      selector: '.jp-DirListing-item[data-file-type="notebook"]', rank: 10
    });
    feed.ended.connect((_, ending) => {
      Widget.attach(new Banner(ending), document.body); // above everything, full width
      Notification.error(ending.short || ending.text, { autoClose: false });
    });
    feed.watchForEnding();
  }
};

export default plugin;
