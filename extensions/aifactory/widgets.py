"""Notebook panels of one's allocation: `from aifactory.widgets import Dashboard`.

Each panel asks the allocations service (in a hub session) or Slurm (elsewhere) through
`aifactory.client`, refreshes in a background thread without blocking the kernel, and stops
when closed. Each also has a text and an HTML form, so executed and exported notebooks show
the numbers too.
"""

from __future__ import annotations

import datetime as dt
import html
import os
import sys
import threading
import time

import ipywidgets as w

from .client import AllocationsError, default_client
from .report import (ACTIVE_HEAD, GPU_HOURS, RECENT_HEAD, active_cells, amount, budgets_text,
                     course_cells, course_head, course_summary, course_text, duration, footer,
                     gpu_h, gpus_text, jobs_text, node_down_text, project_rows, recent_cells, when)

UNREACHABLE_WORDS = "scheduler unreachable"


def bar_colour(percent: float) -> str:
    """Green below 75 %, amber to 90 %, orange to 100 %, red at 100 % and over."""
    if percent >= 100:
        return "#c62828"
    if percent >= 90:
        return "#ef6c00"
    if percent >= 75:
        return "#f9a825"
    return "#2e7d32"


def _e(value) -> str:
    return html.escape(str(value))


def _footer_html(answer: dict) -> str:
    parts = [f'<div class="aif-warning" style="color:#c62828"><b>{_e(x)}</b></div>'
             for x in answer.get("warnings", [])]
    if answer.get("as_of"):
        parts.append(f'<div class="aif-source" style="color:#666;font-size:smaller">as of '
                     f'{_e(when(answer["as_of"]))} ({_e(answer["age_s"])} s old), from '
                     f'{_e(", ".join(answer["source"]))}</div>')
    return "".join(parts)


class Panel(w.VBox):
    """Base: fetch an answer, render it, refresh every `refresh_s` seconds until closed."""

    title = ""

    def __init__(self, client=None, refresh_s: float = 30, **kwargs):
        self.client = client or default_client()
        self.refresh_s = refresh_s
        self.answer: dict | None = None
        self.error: str | None = None
        self.view = w.HTML()
        super().__init__(self.children_for(), **kwargs)
        self._stop = threading.Event()
        self.refresh()
        if refresh_s:
            threading.Thread(target=self._run, daemon=True, name=f"aif-{self.title}").start()

    def children_for(self) -> list:
        return [self.view]

    # What each panel defines.
    def fetch(self) -> dict:
        raise NotImplementedError

    def body_html(self, answer: dict) -> str:
        raise NotImplementedError

    def body_text(self, answer: dict) -> str:
        raise NotImplementedError

    def refresh(self) -> None:
        try:
            self.answer, self.error = self.fetch(), None
        except AllocationsError as e:
            self.error = str(e)
        self.view.value = self.html()
        self.after_refresh()

    def after_refresh(self) -> None:
        pass

    def tick(self) -> None:
        """Once a second, between refreshes (for countdowns)."""

    def interval(self) -> float:
        return self.refresh_s

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(1):
            try:
                if time.monotonic() - last >= self.interval():
                    last = time.monotonic()
                    self.refresh()
                else:
                    self.tick()
            except Exception as e:  # keep refreshing; say what went wrong
                self.error = f"this panel could not be drawn: {e!r}"

    def close(self):
        self._stop.set()
        super().close()

    def html(self) -> str:
        out = f'<div class="aif-panel aif-{self.title.lower()}">'
        if self.error:
            out += f'<div class="aif-error" style="color:#c62828"><b>{_e(self.error)}</b></div>'
        if self.answer is not None:
            out += self.body_html(self.answer) + _footer_html(self.answer)
        return out + "</div>"

    def text(self) -> str:
        lines = [self.title]
        if self.error:
            lines.append(f"error: {self.error}")
        if self.answer is not None:
            lines += [self.body_text(self.answer), *footer(self.answer)]
        return "\n".join(x for x in lines if x)

    def _repr_mimebundle_(self, **kwargs):
        data = super()._repr_mimebundle_(**kwargs) or {}
        data["text/plain"], data["text/html"] = self.text(), self.html()
        return data


class AllocationPanel(Panel):
    """Per project: a bar of used + held of granted, and the numbers behind it."""

    title = "Allocation"

    def fetch(self) -> dict:
        return self.client.budgets()

    def body_html(self, answer: dict) -> str:
        if not answer["projects"]:
            return "<p>You are not a member of any project.</p>"
        out = ""
        for p in answer["projects"]:
            acct = _e(p["account"])
            out += f'<div class="aif-project" data-account="{acct}"><h4>{acct} <small>' \
                   f'({_e(p["role"])})</small></h4>'
            if p["granted_gpu_h"]:
                used = p["used_gpu_h"] / p["granted_gpu_h"] * 100
                held = p["held_gpu_h"] / p["granted_gpu_h"] * 100
                colour = bar_colour(p["percent_used"])
                out += (f'<div style="background:#eee;width:100%;height:14px;display:flex">'
                        f'<div class="aif-bar" data-percent="{p["percent_used"]}" '
                        f'style="background:{colour};width:{min(used, 100):.1f}%"></div>'
                        f'<div style="background:{colour};opacity:.45;'
                        f'width:{min(held, max(0, 100 - used)):.1f}%"></div></div>')
            out += "<table>" + "".join(
                f'<tr><td>{_e(label)}</td><td class="aif-{key}" style="text-align:right">'
                f'{_e(value)}</td></tr>' for label, key, value in project_rows(p)) + "</table>"
            if p.get("users"):
                out += "<table><tr><th>member</th><th>used</th><th>held</th></tr>" + "".join(
                    f'<tr class="aif-member"><td>{_e(u["user"])}</td>'
                    f'<td>{_e(amount(u, "used", p.get("unit", GPU_HOURS)))}</td>'
                    f'<td>{_e(amount(u, "held", p.get("unit", GPU_HOURS)))}</td></tr>'
                    for u in p["users"]) + "</table>"
            out += "</div>"
        return out

    def body_text(self, answer: dict) -> str:
        return budgets_text(answer)


class JobsPanel(Panel):
    """My pending and running jobs (with a cancel button that asks first), and recent ones."""

    title = "Jobs"

    def children_for(self) -> list:
        self.buttons = w.VBox()
        self.message = w.HTML()
        return [self.view, self.buttons, self.message]

    def fetch(self) -> dict:
        return self.client.jobs()

    def after_refresh(self) -> None:
        rows = []
        for job in (self.answer or {}).get("active", []):
            button = w.Button(description=f"Cancel {job['job_id']}", button_style="warning",
                              layout=w.Layout(width="auto"))
            button.on_click(lambda _, j=job: self._ask(j))
            rows.append(button)
        self.buttons.children = rows

    def _ask(self, job: dict) -> None:
        yes = w.Button(description="Yes, cancel it", button_style="danger")
        no = w.Button(description="No")
        question = w.HBox([w.Label(f"Cancel job {job['job_id']} ({job['name']})? "), yes, no])
        yes.on_click(lambda _: self._cancel(job["job_id"], question))
        no.on_click(lambda _: question.close())
        self.buttons.children = (*self.buttons.children, question)

    def _cancel(self, job_id: str, question) -> None:
        question.close()
        self.message.value = self.cancel(job_id)
        self.refresh()

    def cancel(self, job_id: str) -> str:
        """Cancel one of my jobs; returns what happened, in words."""
        try:
            self.client.cancel(job_id)
            return f"Job {_e(job_id)} cancelled."
        except AllocationsError as e:
            return f'<span style="color:#c62828">Job {_e(job_id)} not cancelled: {_e(e)}</span>'

    def body_html(self, answer: dict) -> str:
        def table(cls, head, rows):
            return (f'<table class="{cls}"><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
                    + "".join(f'<tr data-job="{_e(r[0])}">' + "".join(f"<td>{_e(c)}</td>" for c in r)
                              + "</tr>" for r in rows) + "</table>")
        active = [active_cells(j) for j in answer["active"]]
        recent = [recent_cells(j) for j in answer["recent"]]
        return ("<h4>Pending and running</h4>"
                + (table("aif-active", ACTIVE_HEAD, active) if active else "<p>none</p>")
                + "<h4>Recently ended</h4>"
                + (table("aif-recent", RECENT_HEAD, recent) if recent else "<p>none</p>"))

    def body_text(self, answer: dict) -> str:
        return jobs_text(answer)


class ClusterPanel(Panel):
    """Free and total GPUs per partition and GPU type; nodes that are down."""

    title = "Cluster"

    def fetch(self) -> dict:
        return self.client.gpus()

    def body_html(self, answer: dict) -> str:
        rows = "".join(
            f'<tr class="aif-gpus" data-partition="{_e(p["partition"])}"><td>{_e(p["partition"])}'
            f'</td><td>{_e(p["gpu_type"] or "-")}</td><td class="aif-free">{p["free"]}</td>'
            f'<td>{p["total"]}</td><td>{p["down"]}</td></tr>' for p in answer["partitions"])
        down = "".join(f'<li class="aif-node-down" data-node="{_e(n["node"])}">'
                       f"{_e(node_down_text(n))}</li>" for n in answer["nodes_down"])
        return ("<table><tr><th>partition</th><th>GPU</th><th>free</th><th>total</th>"
                f"<th>down</th></tr>{rows}</table>"
                + (f"<p>Nodes taking no jobs:</p><ul>{down}</ul>" if down
                   else "<p>All nodes up.</p>"))

    def body_text(self, answer: dict) -> str:
        return gpus_text(answer)


class SessionPanel(Panel):
    """This notebook session's own job: time left (counting down), project, GPU-hours so far."""

    title = "Session"

    def __init__(self, client=None, refresh_s: float = 30, job_id: str | None = None, **kwargs):
        self.job_id = job_id or os.environ.get("SLURM_JOB_ID", "")
        super().__init__(client, refresh_s, **kwargs)

    def fetch(self) -> dict:
        if not self.job_id:
            raise AllocationsError("This kernel does not run in a Slurm job.")
        return self.client.job(self.job_id)

    def tick(self) -> None:
        if self.answer is not None:
            self.view.value = self.html()

    def _numbers(self, job: dict) -> list[tuple[str, str]]:
        now = time.time()
        end = dt.datetime.fromisoformat(job["end_time"]).timestamp() if job["end_time"] else None
        start = (dt.datetime.fromisoformat(job["start_time"]).timestamp()
                 if job["start_time"] else None)
        spent = job["gpus"] * (now - start) / 3600 if start else 0.0
        return [("job", job["job_id"]), ("node", job["nodes"] or "-"),
                ("project charged", job["account"]), ("GPUs", str(job["gpus"])),
                ("time left", duration(max(0, end - now)) if end else "-"),
                ("GPU-hours so far", gpu_h(spent)), *self._software()]

    def _software(self) -> list[tuple[str, str]]:
        """The session's environment and this kernel's Python, when the panel runs in it."""
        if self.job_id != os.environ.get("SLURM_JOB_ID"):
            return []
        modules = os.environ.get("LOADEDMODULES", "")
        software = os.environ.get("AIFACTORY_ENVIRONMENT_NAME", "") or "-"
        if modules:
            software += f" (modules: {modules.replace(':', ', ')})"
        return [("software", software),
                ("kernel", f"Python {sys.version_info[0]}.{sys.version_info[1]} in {sys.prefix}")]

    def body_html(self, answer: dict) -> str:
        return "<table>" + "".join(
            f'<tr><td>{label}</td><td class="aif-{label.split()[0].lower()}">{_e(value)}</td></tr>'
            for label, value in self._numbers(answer["job"])) + "</table>"

    def body_text(self, answer: dict) -> str:
        return "\n".join(f"{label}: {value}" for label, value in self._numbers(answer["job"]))


class Dashboard(w.Tab):
    """All panels in tabs, sharing one client."""

    def __init__(self, client=None, refresh_s: float = 30, **kwargs):
        client = client or default_client()
        self.panels = [cls(client, refresh_s) for cls in
                       (AllocationPanel, JobsPanel, ClusterPanel, SessionPanel)]
        super().__init__(children=self.panels, **kwargs)
        for i, panel in enumerate(self.panels):
            self.set_title(i, panel.title)

    def close(self):
        for panel in self.panels:
            panel.close()
        super().close()

    def text(self) -> str:
        return "\n\n".join(p.text() for p in self.panels)

    def html(self) -> str:
        return "".join(f"<h3>{p.title}</h3>{p.html()}" for p in self.panels)

    def _repr_mimebundle_(self, **kwargs):
        data = super()._repr_mimebundle_(**kwargs) or {}
        data["text/plain"], data["text/html"] = self.text(), self.html()
        return data


class CoursePanel(Panel):
    """An instructor's view of a course: each participant's session, GPU-hours and last
    activity; the reservation's time left and the course budget; start and stop buttons.

    The view and the buttons go to the allocations service, which checks that you teach
    this course and that the session is the course's before it starts or stops one.
    """

    title = "Course"

    def __init__(self, course: str | None = None, client=None, refresh_s: float = 15,
                 **kwargs):
        self.client = client or default_client()
        self.course = course or self._my_course()
        self._buttons: dict[str, tuple] = {}
        self._fast_until = 0.0
        super().__init__(self.client, refresh_s, **kwargs)

    def _my_course(self) -> str:
        taught = [c["name"] for c in self.client.courses()["courses"]
                  if c["role"] in ("instructor", "admin")]
        if not taught:
            raise AllocationsError("You teach no course here.")
        return taught[0]

    def children_for(self) -> list:
        self.rows = w.VBox()
        self.message = w.HTML()
        start_all = w.Button(description="Start all not running", button_style="success",
                             layout=w.Layout(width="auto"))
        stop_all = w.Button(description="Stop all sessions", button_style="danger",
                            layout=w.Layout(width="auto"))
        start_all.on_click(lambda _: self._show(self.start_all()))
        stop_all.on_click(lambda _: self._show(self.stop_all()))
        return [self.view, self.rows, w.HBox([start_all, stop_all]), self.message]

    def fetch(self) -> dict:
        return self.client.course(self.course)

    def interval(self) -> float:
        # Right after a start or stop, look again every few seconds to show it happen.
        return 3 if time.monotonic() < self._fast_until else self.refresh_s

    def after_refresh(self) -> None:
        participants = (self.answer or {}).get("participants", [])
        if [p["user"] for p in participants] != list(self._buttons):
            self._buttons = {}
            for p in participants:
                start = w.Button(description="Start", button_style="success",
                                 layout=w.Layout(width="70px"))
                stop = w.Button(description="Stop", button_style="warning",
                                layout=w.Layout(width="70px"))
                start.on_click(lambda _, u=p["user"]: self._show(self.start(u)))
                stop.on_click(lambda _, u=p["user"]: self._show(self.stop(u)))
                self._buttons[p["user"]] = (start, stop)
            self.rows.children = [
                w.HBox([w.Label(user, layout=w.Layout(width="120px")), start, stop],
                       _dom_classes=["aif-course-actions"])
                for user, (start, stop) in self._buttons.items()]
        for p in participants:
            start, stop = self._buttons[p["user"]]
            start.disabled = p["state"] in ("running", "pending", "stopping")
            stop.disabled = p["state"] not in ("running", "pending")

    def _act(self, action: str, users: list[str]) -> str:
        if not users:
            return f"Nobody to {action}."
        done = []
        for user in users:
            try:
                result = self.client.course_session(self.course, user, action)
            except AllocationsError as e:
                result = f"not done: {e}"
            done.append(f"{user}: {result}")
        return "; ".join(done)

    def start(self, user: str) -> str:
        """Start `user`'s course session (the course's profile); returns what happened."""
        return self._act("start", [user])

    def stop(self, user: str) -> str:
        return self._act("stop", [user])

    def start_all(self) -> str:
        from .client import course_targets
        return self._act("start", course_targets(self.answer or {"participants": []}, "start"))

    def stop_all(self) -> str:
        from .client import course_targets
        return self._act("stop", course_targets(self.answer or {"participants": []}, "stop"))

    def _show(self, words: str) -> None:
        self.message.value = f'<div class="aif-course-message">{_e(words)}</div>'
        self._fast_until = time.monotonic() + 60
        self.refresh()

    def tick(self) -> None:
        if self.answer is not None and self.answer.get("time_left_s") is not None:
            self.view.value = self.html()

    def body_html(self, answer: dict) -> str:
        summary = course_summary(answer)
        unit = answer.get("unit", GPU_HOURS)
        head = "".join(f"<th>{_e(h)}</th>" for h in course_head(unit))
        rows = "".join(
            f'<tr class="aif-participant" data-user="{_e(p["user"])}" data-state="{_e(p["state"])}">'
            + "".join(f"<td>{_e(c)}</td>" for c in course_cells(p, unit)) + "</tr>"
            for p in answer["participants"])
        return (f"<h4>{_e(summary[0])}</h4><ul>"
                + "".join(f"<li>{_e(line.strip())}</li>" for line in summary[1:]) + "</ul>"
                + f'<table class="aif-course"><tr>{head}</tr>{rows}</table>'
                + f'<p>Spawn link for participants: <code>{_e(answer["spawn_url"])}</code></p>')

    def body_text(self, answer: dict) -> str:
        return course_text(answer)
