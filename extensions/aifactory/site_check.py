"""What aifactory needs of a site's Slurm, checked against what Slurm says (pure).

`aifactory site check` gathers Slurm's answers (its configuration, partitions, nodes,
reservations, the hub account's admin level) and this module says, one finding each, whether
what the site description and aifactory need holds, and where not, the line to write.
"""

from __future__ import annotations

import re

from dataclasses import dataclass

from . import slurm
from .site_description import Site

RECOMMENDED_PRIVATE_DATA = "accounts,jobs,reservations,usage,users"


@dataclass(frozen=True)
class Finding:
    ok: bool
    what: str  # what aifactory needs (and found, or not), one sentence
    fix: str = ""  # where it does not hold: the line to write, and where


@dataclass(frozen=True)
class SlurmFacts:
    config: dict[str, str]  # scontrol show config
    partitions: dict[str, slurm.Partition]
    nodes: list[slurm.Node]
    reservations: dict[str, slurm.Reservation]
    hub_user: str  # the account the hub and the service run as
    hub_admin_level: str  # its AdminLevel in slurmdbd
    environment: str  # the shared environment's Python (site.yaml dask.python)
    environment_readable: bool  # by everyone, every folder on its way
    service_user: str = ""  # the allocations service's own account ("" : not asked)
    service_admin_level: str = ""
    service_sudo: str = ""  # `sudo -l -U` of that account
    hub_sudo: str = ""  # `sudo -l -U` of the hub's account


def _words(value: str) -> set[str]:
    return {w.strip().lower() for w in value.split(",") if w.strip()}


def _finding(ok: bool, yes: str, no: str, fix: str) -> Finding:
    return Finding(True, yes) if ok else Finding(False, no, fix)


ALWAYS_ACCOUNTED = {"cpu", "mem", "energy", "node", "billing", "fs/disk", "vmem", "pages"}


def accounting(c: dict[str, str], site: Site, nodes: list[slurm.Node]) -> list[Finding]:
    listed = c.get("AccountingStorageTRES", "")
    tracked = _words(listed) | ALWAYS_ACCOUNTED  # gres/gpu only when listed
    gpu_types = sorted({t.lower() for n in nodes for t in n.gpus() if t})
    needed = [site.billing.tres] + (["gres/gpu"] + [f"gres/gpu:{t}" for t in gpu_types]
                                    if any(n.gpus() for n in nodes) else [])
    lacking = [t for t in dict.fromkeys(needed) if t not in tracked]
    enforce = _words(c.get("AccountingStorageEnforce", ""))
    found = [
        _finding(c.get("AccountingStorageType") == "accounting_storage/slurmdbd",
                 "Accounting: job records and budgets are kept in slurmdbd.",
                 "Accounting is not kept in slurmdbd: budgets (GrpTRESMins) and the jobs "
                 "list need it.",
                 "slurm.conf: AccountingStorageType=accounting_storage/slurmdbd"),
        _finding({"associations", "limits"} <= enforce,
                 "Budgets are enforced (AccountingStorageEnforce has associations, limits).",
                 "Slurm does not enforce budgets: a project could overspend its GrpTRESMins.",
                 "slurm.conf: AccountingStorageEnforce=associations,limits,qos,safe"),
        _finding(not lacking,
                 f"Slurm accounts the site's budget TRES ({site.billing.tres}) and GPUs by "
                 f"type ({', '.join(gpu_types) or 'none'}).",
                 f"Slurm does not account {', '.join(lacking)}: budgets are in "
                 f"{site.billing.tres} (site.yaml billing.tres), GPU-hours per project and "
                 "type come from gres/gpu.",
                 f"slurm.conf: AccountingStorageTRES={listed + ',' if listed else ''}"
                 + ",".join(lacking)),
    ]
    if gpu_types or any(p.gpu_types for p in site.partitions.values()):
        found.append(_finding("gpu" in _words(c.get("GresTypes", "")),
                              "GRES type gpu is known to Slurm.",
                              "Slurm knows no GRES type gpu.", "slurm.conf: GresTypes=gpu"))
    return found


def partitions(site: Site, facts: SlurmFacts) -> list[Finding]:
    found = []
    for name, wanted in sorted(site.partitions.items()):
        part = facts.partitions.get(name)
        if part is None:
            found.append(Finding(False, f"Partition {name} (site.yaml partitions) is not in "
                                        "Slurm.",
                                 f"slurm.conf: PartitionName={name} Nodes=... (or remove it "
                                 "from site.yaml)"))
            continue
        members = [n for n in facts.nodes if name in n.partitions]
        have: dict[str, int] = {}
        for n in members:
            for gpu_type, count in n.gpus().items():
                have[gpu_type] = max(have.get(gpu_type, 0), count)
        for gpu_type in wanted.gpu_types:
            found.append(_finding(
                have.get(gpu_type, 0) >= wanted.gpus_per_node,
                f"Partition {name} has {gpu_type} GPUs, {have.get(gpu_type, 0)} on a node "
                f"(site.yaml: {wanted.gpus_per_node}).",
                f"Partition {name} has no node with {wanted.gpus_per_node} {gpu_type} GPUs "
                f"(site.yaml partitions.{name}); Slurm says: "
                + (", ".join(f"{t or 'untyped'} x{c}" for t, c in sorted(have.items())) or "no GPUs")
                + ".",
                f"slurm.conf: NodeName=<node> Gres=gpu:{gpu_type}:{wanted.gpus_per_node} (and "
                f"gres.conf), in PartitionName={name}; or correct site.yaml"))
        limit = part.max_time_min
        if limit not in (None, slurm.UNLIMITED) and wanted.max_walltime_min > limit:
            found.append(Finding(False, f"site.yaml offers {wanted.max_walltime_min} minutes on "
                                        f"{name}, Slurm's MaxTime is {limit:.0f}: such jobs "
                                        "would never start.",
                                 f"site.yaml partitions.{name}.max_walltime: at most "
                                 f"{limit:.0f} minutes (or MaxTime in slurm.conf)"))
    for profile in site.profiles:
        part = profile.slurm.get("partition", "")
        if part and part not in site.partitions:
            found.append(Finding(False, f"Profile {profile.slug} asks for partition {part}, "
                                        "which site.yaml does not describe.",
                                 f"site.yaml partitions: {part}: {{...}}"))
    return found


def reservations(site: Site, facts: SlurmFacts) -> list[Finding]:
    return [_finding(c.reservation in facts.reservations,
                     f"Course {c.name}'s reservation {c.reservation} exists.",
                     f"Course {c.name} names reservation {c.reservation}, which Slurm does "
                     "not have: its participants could not start sessions.",
                     f"scontrol create reservation ReservationName={c.reservation} "
                     f"Accounts={c.account} Nodes=... StartTime=... Duration=...")
            for c in site.courses if c.reservation]


def privacy_and_budgets(site: Site, facts: SlurmFacts) -> list[Finding]:
    c = facts.config
    private = _words(c.get("PrivateData", ""))
    period = (c.get("PriorityUsageResetPeriod") or "NONE").upper()
    decay = c.get("PriorityDecayHalfLife", "")
    multifactor = c.get("PriorityType") == "priority/multifactor"
    found = [
        _finding({"jobs", "usage", "accounts"} <= private,
                 f"People see only their own jobs and usage (PrivateData={c.get('PrivateData')}).",
                 "Slurm shows everyone's jobs or usage to everyone (PrivateData="
                 f"{c.get('PrivateData') or 'not set'}).",
                 f"slurm.conf and slurmdbd.conf: PrivateData={RECOMMENDED_PRIVATE_DATA}"),
        # Each session's TLS key travels in its job's environment (aifactory.spawner.certs).
        _finding("job_env" not in _words(c.get("AccountingStoreFlags", "")),
                 "Jobs' environments stay out of the accounting database "
                 "(AccountingStoreFlags has no job_env).",
                 "Slurm keeps every job's environment in its accounting database "
                 f"(AccountingStoreFlags={c.get('AccountingStoreFlags')}), where operators read "
                 "it with sacct --env-vars; each session's TLS key is in its job's environment.",
                 "slurm.conf: AccountingStoreFlags without job_env"),
        _finding(multifactor,
                 "Usage is tracked per project (priority/multifactor).",
                 "Slurm keeps no usage per project (sshare needs priority/multifactor; "
                 "its reset period and decay are then settings too).",
                 "slurm.conf: PriorityType=priority/multifactor, PriorityDecayHalfLife=0, "
                 "PriorityUsageResetPeriod=QUARTERLY"),
    ]
    if not multifactor:  # Slurm prints neither setting then: one cause, one finding
        return found + _course_rules(site, c)
    found += [
        # NOW resets once, when slurmctld starts; a budget needs a calendar period.
        _finding(period in ("DAILY", "WEEKLY", "MONTHLY", "QUARTERLY", "YEARLY"),
                 f"Budgets start again each period (PriorityUsageResetPeriod={period}).",
                 f"Usage does not reset each period (PriorityUsageResetPeriod={period}): a "
                 "budget would be spent once for ever.",
                 "slurm.conf: PriorityUsageResetPeriod=QUARTERLY (the site's budget period)"),
        _finding(decay in ("0", "00:00:00", "0-00:00:00"),
                 "Usage does not decay, so used = spent this period (PriorityDecayHalfLife=0).",
                 f"Usage decays (PriorityDecayHalfLife={decay}): budgets would refill by "
                 "themselves and 'used' would not be what was spent.",
                 "slurm.conf: PriorityDecayHalfLife=0"),
    ]
    return found + _course_rules(site, c)


def _course_rules(site: Site, c: dict[str, str]) -> list[Finding]:
    plugins = {w.removeprefix("job_submit/") for w in _words(c.get("JobSubmitPlugins", ""))}
    found = []
    if site.courses:
        found.append(_finding(
            "lua" in plugins,
            "Course rules are enforced by Slurm (JobSubmitPlugins=lua).",
            "Slurm does not enforce course rules: a participant could use the course's "
            "account outside its reservation and size.",
            "slurm.conf: JobSubmitPlugins=lua (job_submit.lua: `aifactory cluster up` "
            "renders the demo's from hub_config/cluster/job_submit.lua.in)"))
    return found


def hub_account(site: Site, facts: SlurmFacts) -> list[Finding]:
    level = facts.hub_admin_level.lower()
    found = [_finding(
        facts.hub_user == "root" or level in ("operator", "administrator"),
        f"The hub's account ({facts.hub_user}) sees all jobs and usage (AdminLevel "
        f"{facts.hub_admin_level}).",
        f"The hub's account {facts.hub_user} cannot see past PrivateData (AdminLevel "
        f"{facts.hub_admin_level}): the widgets' totals and the queue would be its own only.",
        f"sacctmgr modify user {facts.hub_user} set AdminLevel=Operator")]
    if facts.hub_user != "root":
        rules = facts.hub_sudo
        submits = "/sbatch --parsable" in rules and "/scancel" in rules and "NOPASSWD" in rules
        too_much = "SETENV" in rules or re.search(r"(NOPASSWD:|,)\s*ALL\b|--parsable\s*\*", rules)
        found.append(_finding(
            not too_much,
            f"The hub's account {facts.hub_user} may run nothing more through sudo than "
            "aifactory's rules name.",
            f"The hub's account {facts.hub_user} may run more through sudo than sbatch "
            "--parsable and scancel JOBID (ALL, SETENV or a wildcard): whoever takes the hub "
            "over could run anything as anyone.",
            "/etc/sudoers.d/aifactory: only the rules of the README's security model"))
        found.append(_finding(
            submits,
            f"The hub's account {facts.hub_user} may submit and cancel a person's session as "
            "them (sudo).",
            f"No sudo rule lets {facts.hub_user} submit a person's session as them "
            "(sbatch --parsable) and cancel it (scancel JOBID): no session would start.",
            f"/etc/sudoers.d/aifactory: {facts.hub_user} ALL = (%<users group>, !root) "
            "NOPASSWD: /usr/bin/sbatch --parsable, /usr/bin/scancel ^[0-9]{1,12}(_[0-9]{1,12})?$ "
            "(README, security model)"))
    found.append(_finding(
        facts.environment_readable,
        f"The shared environment {facts.environment} is readable by everyone here (the "
        "nodes must mount it at the same path).",
        f"The shared environment {facts.environment} is missing or not readable by "
        "everyone here: sessions and Dask workers run it as each person.",
        "install it there, readable by all (chmod -R o+rX), or set site.yaml dask.python"))
    return found


def service_account(facts: SlurmFacts) -> list[Finding]:
    if not facts.service_user:
        return []
    user, level = facts.service_user, facts.service_admin_level
    cancels = "/scancel" in facts.service_sudo and "NOPASSWD" in facts.service_sudo
    return [
        _finding(level.lower() in ("operator", "administrator"),
                 f"The allocations service's account {user} sees all jobs and usage "
                 f"(AdminLevel {level}).",
                 f"The allocations service's account {user} cannot see past PrivateData "
                 f"(AdminLevel {level or 'none'}).",
                 f"sacctmgr add user {user} account=root MaxSubmitJobs=0; "
                 f"sacctmgr modify user {user} set AdminLevel=Operator"),
        _finding(cancels,
                 f"The allocations service's account {user} may cancel a person's job as them "
                 "(sudo).",
                 f"No sudo rule lets {user} cancel a person's job as them: cancelling from "
                 "the widgets would fail.",
                 f"/etc/sudoers.d/aifactory: {user} ALL = (%<users group>, !root) NOPASSWD: "
                 "/usr/bin/scancel ^[0-9]{1,12}(_[0-9]{1,12})?$ (README, security model)"),
    ]


def check(site: Site, facts: SlurmFacts) -> list[Finding]:
    return [*accounting(facts.config, site, facts.nodes),
            *partitions(site, facts), *reservations(site, facts),
            *privacy_and_budgets(site, facts), *hub_account(site, facts),
            *service_account(facts)]


def report(findings: list[Finding]) -> str:
    lines = []
    for f in findings:
        lines.append(f"{'ok' if f.ok else 'MISSING':8} {f.what}")
        if not f.ok:
            lines.append(f"{'':8}   write: {f.fix}")
    bad = sum(not f.ok for f in findings)
    lines.append(f"{len(findings) - bad} of {len(findings)} hold"
                 + ("." if not bad else f"; {bad} to fix."))
    return "\n".join(lines)
