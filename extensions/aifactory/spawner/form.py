"""The spawn form: profiles, what is free now, and what a choice costs.

The page computes the cost as you change fields, but it decides nothing: the hub checks the
submitted values again (`request.resolve`, `request.check_budget`).
"""

from __future__ import annotations

import json

from jinja2 import Environment

from ..billing import WeightsError, parse_weights, tres_order
from ..site import Site
from ..snapshot import GpuAvailability
from .. import slurm

_ENV = Environment(autoescape=True)

TEMPLATE = _ENV.from_string("""
<style>
  .aif-profile { display:block; border:1px solid #ccc; border-radius:6px; padding:8px 12px; margin:6px 0; }
  .aif-profile input[type=radio] { margin-right:8px; }
  .aif-muted { color:#666; font-size:90%; }
  .aif-table td, .aif-table th { padding:2px 10px; }
  #aif-cost { font-weight:bold; margin:10px 0; }
  .aif-course-window { font-weight:bold; }
  .aif-course-not-yet, .aif-course-closed { color:#8a6d00; }
  .aif-warning { background:#fff3cd; border:1px solid #e0c36c; padding:6px 10px; border-radius:4px; }
</style>
{% if unreachable %}<p class="aif-warning" id="aif-unreachable">Scheduler unreachable: availability and
budgets could not be read just now ({{ unreachable }}). You can still start; the hub checks again.</p>{% endif %}
<h4>Choose a profile</h4>
{% for p in profiles %}
<label class="aif-profile" for="aif-profile-{{ p.slug }}">
  <input type="radio" name="profile" id="aif-profile-{{ p.slug }}" value="{{ p.slug }}"
         {% if p.slug == selected %}checked{% endif %}>
  <strong>{{ p.display_name }}</strong>
  <span class="aif-muted">{{ p.description }}</span>
  {% if p.slug in course_notes %}<br><span class="aif-course-window aif-course-{{ course_notes[p.slug].state|replace(' ', '-') }}"
    data-profile="{{ p.slug }}">{{ course_notes[p.slug].text }}</span>{% endif %}
  {% for o in p.options %}
  <br><span class="aif-muted">{{ o.display_name }}:</span>
  <select name="option_{{ o.name }}" data-profile="{{ p.slug }}" class="aif-option">
    {% for c in o.choices %}<option value="{{ c.key }}" data-slurm="{{ c.slurm|tojson|forceescape }}"
      {% if c.key == o.default_choice().key %}selected{% endif %}>{{ c.display_name }}</option>{% endfor %}
  </select>
  {% endfor %}
</label>
{% endfor %}

<p id="aif-cost"></p>

<h4>GPUs free now</h4>
<table class="aif-table" id="aif-availability">
  <tr><th>Partition</th><th>GPU</th><th>Free</th><th>Total</th><th>Down</th></tr>
  {% for a in availability %}
  <tr><td>{{ a.partition }}</td><td>{{ a.gpu_type|upper }}</td><td>{{ a.free }}</td><td>{{ a.total }}</td><td>{{ a.down }}</td></tr>
  {% else %}<tr><td colspan="5" class="aif-muted">not known right now</td></tr>{% endfor %}
</table>

<h4>Your projects' budgets</h4>
<table class="aif-table" id="aif-budgets">
  <tr><th>Project</th><th>Granted</th><th>Used</th><th>Held by running jobs</th><th>Left</th></tr>
  {% for b in budgets %}
  <tr><td>{{ b.account }}</td><td>{{ b.granted }}</td><td>{{ b.used }}</td><td>{{ b.held }}</td><td>{{ b.left }}</td></tr>
  {% endfor %}
</table>
<p class="aif-muted" id="aif-budget-unit">{{ unit_words }}{% if as_of is not none %} ({{ as_of }} s ago){% endif %}.</p>

<details id="aif-advanced">
  <summary>Advanced</summary>
  <p class="aif-muted">Leave a field empty to use the profile's value. Values outside the profile's limits are refused.</p>
  <table class="aif-table">
    <tr><td><label for="aif-partition">Partition</label></td><td><select name="partition" id="aif-partition">
      <option value="">(profile)</option>{% for name in partitions %}<option>{{ name }}</option>{% endfor %}</select></td></tr>
    <tr><td><label for="aif-gpu_type">GPU type</label></td><td><select name="gpu_type" id="aif-gpu_type">
      <option value="">(profile)</option>{% for t in gpu_types %}<option>{{ t }}</option>{% endfor %}</select></td></tr>
    <tr><td><label for="aif-gpus">GPUs</label></td><td><input name="gpus" id="aif-gpus" type="number" min="0" max="16"></td></tr>
    <tr><td><label for="aif-cpus">CPUs</label></td><td><input name="cpus" id="aif-cpus" type="number" min="1" max="1024"></td></tr>
    <tr><td><label for="aif-memory_gb">Memory (GB)</label></td><td><input name="memory_gb" id="aif-memory_gb" type="number" min="1"></td></tr>
    <tr><td><label for="aif-walltime">Time</label></td><td><input name="walltime" id="aif-walltime" placeholder="HH:MM:SS" pattern="([0-9]{1,2}-)?[0-9]{1,3}:[0-9]{2}:[0-9]{2}"></td></tr>
    <tr><td><label for="aif-account">Account</label></td><td><select name="account" id="aif-account">
      <option value="">(profile, or your default: {{ default_account }})</option>{% for a in accounts %}<option>{{ a }}</option>{% endfor %}</select></td></tr>
    <tr><td><label for="aif-qos">QOS</label></td><td><select name="qos" id="aif-qos">
      <option value="">(the account's default)</option>{% for q in qos %}<option>{{ q }}</option>{% endfor %}</select></td></tr>
    <tr><td><label for="aif-reservation">Reservation</label></td><td><select name="reservation" id="aif-reservation">
      <option value="">(none)</option>{% for r in reservations %}<option>{{ r }}</option>{% endfor %}</select></td></tr>
  </table>
</details>
<script type="application/json" id="aif-data">{{ data_json|safe }}</script>
<script>
(function () {
  const data = JSON.parse(document.getElementById("aif-data").textContent);
  const form = document.getElementById("aif-cost").closest("form") || document;
  const val = (name) => { const el = form.querySelector("[name=" + name + "]"); return el ? el.value.trim() : ""; };
  function minutes(t) {
    const m = /^(?:(\\d+)-)?(\\d+):(\\d\\d):(\\d\\d)$/.exec(t || "");
    return m ? (+(m[1] || 0)) * 1440 + (+m[2]) * 60 + (+m[3]) + (+m[4] ? 1 : 0) : 0;
  }
  function update() {
    const checked = form.querySelector("input[name=profile]:checked");
    if (!checked) return;
    // The profile, then its chosen options, then the advanced fields: as the hub resolves them.
    const p = Object.assign({}, data.profiles[checked.value]);
    form.querySelectorAll("select.aif-option[data-profile='" + checked.value + "']").forEach(function (s) {
      Object.assign(p, JSON.parse(s.options[s.selectedIndex].dataset.slurm)); });
    form.querySelectorAll("select.aif-option").forEach(function (s) { s.disabled = s.dataset.profile !== checked.value; });
    const num = (name, fallback) => val(name) !== "" ? +val(name) : fallback;
    const gpus = num("gpus", p.gpus), cpus = num("cpus", p.cpus), memory = num("memory_gb", p.memory_gb);
    const partition = val("partition") || p.partition;
    const type = val("gpu_type") || p.gpu_type || data.first_gpu_type[partition] || "";
    const walltime = val("walltime") || p.walltime;
    const account = val("account") || p.account || data.default_account;
    const hours = minutes(walltime) / 60;
    const cost = document.getElementById("aif-cost");
    const left = data.left[account], b = data.billing;
    let text, units;
    if (b.by_gpu) {
      if (!gpus) { cost.textContent = "No GPUs: this session costs no GPU-hours (" + walltime + ")."; return; }
      units = gpus * hours;
      text = gpus + " GPU" + (gpus > 1 ? "s" : "") + " × " + (+hours.toFixed(2)) + " h = " + (+units.toFixed(2)) + " GPU-hours";
    } else {
      // Slurm's billing: the partition's weights summed in its TRES order, cut to a whole number.
      const given = {"cpu": cpus, "mem": memory * 1024, "node": 1, "gres/gpu": gpus};
      if (type) given["gres/gpu:" + type] = gpus;
      const weights = data.weights[partition];
      if (weights === null) { cost.textContent = "The cost is not known: Slurm's billing weights of " + partition + " could not be read."; return; }
      let sum = weights && weights.length ? 0 : cpus;
      (weights || []).forEach(function (w) { sum += w[1] * (given[w[0]] || 0); });
      const rate = Math.floor(sum);
      units = rate * hours;
      text = rate + " " + b.unit + "/h × " + (+hours.toFixed(2)) + " h = " + (+units.toFixed(2)) + " " + b.unit
        + " (" + (+(units / b.units_per_gpu_hour).toFixed(2)) + " GPU-h)";
    }
    const leftWords = b.by_gpu ? left : left + " " + b.unit;
    cost.textContent = left === undefined || left === null ? text + " on project " + account + "."
      : text + " of the " + leftWords + " left on project " + account + (units > left ? ": more than is left." : ".");
  }
  // A spawn link's fields (opt-NAME=value) fill the form: the person sees the cost, then starts.
  new URLSearchParams(location.search).forEach(function (value, key) {
    const name = key.replace(/^opt-/, "");
    if (name === "profile") {
      const radio = form.querySelector("input[name=profile][value='" + CSS.escape(value) + "']");
      if (radio) radio.checked = true;
      return;
    }
    const el = form.querySelector("[name='" + CSS.escape(name) + "']");
    if (!el || el.type === "radio") return;
    el.value = value;
    const advanced = el.closest("details");
    if (advanced) advanced.open = true;
  });
  form.addEventListener("change", update);
  form.addEventListener("input", update);
  update();
})();
</script>
""")


def _weights_or_none(text: str) -> list | None:
    """The weights in Slurm's order for the page's script; None where they cannot be read."""
    try:
        return tres_order(parse_weights(text))
    except WeightsError:
        return None


def render(site: Site, *, selected: str, accounts: list[str], default_account: str,
           qos: list[str], reservations: list[str], availability: list[GpuAvailability],
           budgets: dict[str, slurm.Budget], budgets_age: float | None,
           unreachable: str = "", profiles=None, course_notes: dict | None = None,
           weights: dict[str, str] | None = None) -> str:
    """`profiles`: those this person may choose (default: all); `course_notes`: per course
    profile, its window (courses.window), shown on the profile; `weights`: each partition's
    TRESBillingWeights where the site bills in units. Budgets are in minutes of its TRES."""
    profiles = site.profiles if profiles is None else profiles
    billing = site.billing
    mine = [budgets[a] for a in accounts if a in budgets]

    def amount(minutes):
        if minutes is None:
            return "unlimited"
        beside = "" if billing.by_gpu else f" ({billing.gpu_hours(minutes / 60):.1f} GPU-h)"
        return f"{minutes / 60:.1f}{beside}"

    data = {
        "default_account": default_account,
        "left": {b.account: (None if b.remaining_min is None else round(b.remaining_min / 60, 1))
                 for b in mine},
        "profiles": {p.slug: {key: p.slurm.get(key, 0 if key == "gpus" else "")
                              for key in ("gpus", "cpus", "memory_gb", "walltime", "account",
                                          "partition", "gpu_type")} for p in profiles},
        "billing": {"by_gpu": billing.by_gpu, "unit": billing.unit,
                    "units_per_gpu_hour": billing.units_per_gpu_hour},
        "weights": {name: _weights_or_none(text) for name, text in (weights or {}).items()},
        "first_gpu_type": {name: p.gpu_types[0] if p.gpu_types else ""
                           for name, p in site.partitions.items()},
    }
    return TEMPLATE.render(
        profiles=profiles, course_notes=course_notes or {}, selected=selected, availability=availability,
        budgets=[{"account": b.account, "granted": amount(b.granted_min), "used": amount(b.used_min),
                  "held": amount(b.held_min), "left": amount(b.remaining_min)} for b in mine],
        unit_words=billing.describe(),
        as_of=None if budgets_age is None else int(budgets_age),
        partitions=list(site.partitions),
        gpu_types=sorted({t for p in site.partitions.values() for t in p.gpu_types}),
        accounts=accounts, default_account=default_account, qos=qos, reservations=reservations,
        # No "<" at all inside the script element, so nothing in the data can end it.
        data_json=json.dumps(data).replace("<", "\\u003c"), unreachable=unreachable)
