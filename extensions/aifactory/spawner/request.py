"""What a person asks for on the spawn page, checked against the site and their Slurm access.

Every value that reaches the job script passes `resolve` first: a whitelist of fields, one
short value each made only of letters, digits and `._:-`, numbers in range, accounts and
reservations the user really has. Anything else is a `RequestError` whose message is one
sentence for the person who typed it.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from .. import course_rules, slurm
from ..billing import Billing
from ..site_description import (ENVIRONMENT_OPTION, FIELDS, Site, format_minutes,
                                walltime_minutes)
from ..availability import only_unusable_nodes, usable_reservations
from ..report import unusable_words

SAFE_VALUE_RE = re.compile(r"^[A-Za-z0-9_.:-]{0,64}$")
NUMBER_RE = re.compile(r"^[0-9]{1,5}$")
LABELS = {"profile": "Profile", "partition": "Partition", "gpu_type": "GPU type",
          "gpus": "GPUs", "cpus": "CPUs", "memory_gb": "Memory (GB)", "walltime": "Time",
          "account": "Account", "qos": "QOS", "reservation": "Reservation"}
# Fields the hub itself adds to a form or a spawn URL.
IGNORED = {"_xsrf"}


class RequestError(ValueError):
    """Shown to the person on the spawn form (JupyterHub reads `jupyterhub_message`)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.jupyterhub_message = message


@dataclass(frozen=True)
class SessionRequest:
    profile: str
    partition: str
    gpu_type: str
    gpus: int
    cpus: int
    memory_gb: int
    walltime: str
    account: str
    reservation: str
    idle_minutes: float
    qos: str = ""
    environment: str = ""  # the site environment (its modules are loaded in the job)

    @property
    def walltime_min(self) -> int:
        return walltime_minutes(self.walltime)

    @property
    def gpu_minutes(self) -> int:
        return self.gpus * self.walltime_min

    def to_options(self) -> dict:
        """As user_options: the form's own fields, which `resolve` accepts again as they are."""
        options = asdict(self)
        del options["idle_minutes"]
        environment = options.pop("environment")
        if environment:
            options[f"option_{ENVIRONMENT_OPTION}"] = environment
        return options

    def rate(self, billing: Billing, weights: str = "") -> int:
        """Units per hour: GPUs, or the billing Slurm gives this job in its partition
        (`weights`: the partition's TRESBillingWeights)."""
        return billing.rate(weights, cpus=self.cpus, memory_mb=self.memory_gb * 1024,
                            gpus=self.gpus, gpu_type=self.gpu_type)

    def cost(self, billing: Billing, weights: str = "") -> float:
        """What the session costs if it runs its whole walltime, in the site's unit."""
        return self.rate(billing, weights) * self.walltime_min / 60

    def describe_cost(self, billing: Billing = Billing(), weights: str = "") -> str:
        minutes = self.walltime_min  # "2.5 h", but "5 min" rather than "0.0833333 h"
        hours = f"{minutes / 60:g} h" if minutes % 30 == 0 else f"{minutes} min"
        if billing.by_gpu:
            return (f"{self.gpus} GPU{'s' if self.gpus != 1 else ''} × {hours} = "
                    f"{round(self.gpu_minutes / 60, 2):g} GPU-hours")
        return (f"{self.rate(billing, weights)} {billing.unit}/h × {hours} = "
                f"{billing.amount(self.cost(billing, weights))}")


def sbatch_directives(request: SessionRequest) -> list[str]:
    """The #SBATCH lines of what was asked (checked by `resolve`): partition, account, time,
    CPUs, memory, GPUs, reservation, QOS. Sessions and notebook jobs share them."""
    lines = [f"#SBATCH --partition={request.partition}",
             f"#SBATCH --account={request.account}",
             f"#SBATCH --time={request.walltime}",
             f"#SBATCH --cpus-per-task={request.cpus}",
             f"#SBATCH --mem={request.memory_gb}G"]
    if request.gpus:
        lines.append(f"#SBATCH --gres=gpu:{request.gpu_type}:{request.gpus}")
    if request.reservation:
        lines.append(f"#SBATCH --reservation={request.reservation}")
    if request.qos:
        lines.append(f"#SBATCH --qos={request.qos}")
    return lines


def environment_lines(site: Site, request: SessionRequest) -> list[str]:
    """Lmod, in every job of a site with a module tree (the sidebar uses it), and the chosen
    environment's modules loaded; a module that fails to load ends the job with Lmod's words
    in its log."""
    modules = site.modules
    if not modules.path:
        return []
    lines = [f"export MODULEPATH={shlex.quote(':'.join(modules.path))}",
             f"if [ -r {shlex.quote(modules.init)} ]; then . {shlex.quote(modules.init)}; fi"]
    environment = site.environment(request.environment)
    if environment is not None:
        load = " ".join(shlex.quote(m) for m in environment.modules)
        lines += [f"export AIFACTORY_ENVIRONMENT={shlex.quote(environment.name)}",
                  f"export AIFACTORY_ENVIRONMENT_NAME={shlex.quote(environment.display_name)}",
                  f"module load {load} || {{ echo 'aifactory: the modules of environment "
                  f"{environment.name} did not load'; exit 1; }}"]
    return lines


def _normalize(raw: Mapping[str, Any], option_names: set[str]) -> dict[str, str]:
    values = {}
    allowed = set(FIELDS) | {"profile"} | {f"option_{n}" for n in option_names}
    for key, value in raw.items():
        if key in IGNORED:
            continue
        if key not in allowed:
            shown = key if SAFE_VALUE_RE.match(key) else "(unreadable)"
            raise RequestError(f"Unknown field '{shown[:40]}'.")
        label = LABELS.get(key, key)
        if isinstance(value, (list, tuple)):
            if len(value) != 1:
                raise RequestError(f"{label}: give exactly one value.")
            value = value[0]
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise RequestError(f"{label}: must be text or a number.")
        value = value.strip()
        if not SAFE_VALUE_RE.match(value):
            raise RequestError(f"{label}: use only letters, digits and . _ : - (at most 64).")
        values[key] = value
    return values


def _number(label: str, value) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not NUMBER_RE.match(str(value)):
        raise RequestError(f"{label} must be a whole number, not '{value}'.")
    return int(value)


def resolve(site: Site, raw: Mapping[str, Any], *, user: str, accounts: list[str],
            default_account: str, reservations: Mapping[str, slurm.Reservation],
            qos: Mapping[str, list[str]] | None = None, groups=()) -> SessionRequest:
    """`groups`: the user's hub groups (a course's profile is for its participants only)."""
    all_options = {o.name for p in site.profiles for o in p.options}
    values = _normalize(raw, all_options)
    slug = values.pop("profile", "") or site.default_profile.slug
    profile = next((p for p in site.profiles_for(groups) if p.slug == slug), None)
    if profile is None:
        raise RequestError(f"There is no profile '{slug}'.")

    chosen = dict(profile.slurm)
    environment = None
    for option in profile.options:
        key = values.pop(f"option_{option.name}", "") or option.default_choice().key
        choice = next((c for c in option.choices if c.key == key), None)
        if choice is None:
            if option.name == ENVIRONMENT_OPTION:
                raise RequestError(f"The {profile.display_name} profile does not offer the "
                                   f"software environment '{key}'; it offers "
                                   f"{', '.join(c.key for c in option.choices)}.")
            raise RequestError(f"{option.display_name}: '{key}' is not one of the choices.")
        chosen.update(choice.slurm)
        if option.name == ENVIRONMENT_OPTION:
            environment = site.environment(choice.key)
    leftover = [k for k in values if k.startswith("option_")]
    if leftover:
        raise RequestError(f"The {profile.display_name} profile has no option "
                           f"'{leftover[0][len('option_'):]}'.")
    for name, value in values.items():
        if value == "":
            continue
        if name in profile.fixed and value != str(chosen.get(name, "")):
            raise RequestError(f"The {profile.display_name} profile sets the "
                               f"{LABELS[name].lower()}; it cannot be changed.")
        chosen[name] = value

    partition = site.partitions.get(chosen["partition"])
    if partition is None:
        raise RequestError(f"There is no partition '{chosen['partition']}'.")
    if environment is not None and partition.name not in environment.partitions:
        raise RequestError(f"The software environment {environment.display_name} is not "
                           f"offered on the {partition.name} partition (only on "
                           f"{', '.join(environment.partitions)}).")
    gpus = _number("GPUs", chosen.get("gpus", 0))
    cpus = _number("CPUs", chosen.get("cpus", 1))
    memory = _number("Memory (GB)", chosen.get("memory_gb", 1))
    gpu_type = chosen.get("gpu_type", "") or ""
    limits = profile.limits

    if not partition.gpu_types:
        if gpus or gpu_type:
            raise RequestError(f"The {partition.name} partition has no GPUs.")
    else:
        gpu_type = gpu_type or partition.gpu_types[0]
        if gpu_type not in partition.gpu_types:
            raise RequestError(f"The {partition.name} partition has no {gpu_type} GPUs "
                               f"(it has {', '.join(partition.gpu_types)}).")
        if gpus > partition.gpus_per_node:
            raise RequestError(f"A {partition.name} node has {partition.gpus_per_node} GPUs; "
                               f"you asked for {gpus}.")
    if gpus > limits.get("gpus", partition.gpus_per_node):
        raise RequestError(f"The {profile.display_name} profile allows at most "
                           f"{limits['gpus']} GPUs.")
    most_cpus = min(partition.cpus_per_node, limits.get("cpus", partition.cpus_per_node))
    if not 1 <= cpus <= most_cpus:
        raise RequestError(f"CPUs must be between 1 and {most_cpus}; you asked for {cpus}.")
    most_memory = min(partition.memory_gb_per_node,
                      limits.get("memory_gb", partition.memory_gb_per_node))
    if not 1 <= memory <= most_memory:
        raise RequestError(f"Memory must be between 1 and {most_memory} GB; you asked for {memory}.")

    walltime = str(chosen.get("walltime", ""))
    minutes = walltime_minutes(walltime)
    if not minutes:
        raise RequestError(f"Time '{walltime}' is not a duration like 02:00:00 or 1-00:00:00.")
    most_minutes = min(partition.max_walltime_min,
                       walltime_minutes(limits.get("walltime", "")) or partition.max_walltime_min)
    if minutes > most_minutes:
        raise RequestError(f"Time {walltime} is longer than the {format_minutes(most_minutes)} "
                           f"this profile and partition allow.")

    account = chosen.get("account", "") or default_account
    if account not in accounts:
        mine = ", ".join(accounts) or "none"
        raise RequestError(f"You cannot charge account '{account}'; yours: {mine}.")
    course = site.course_of_account(account)
    if course is not None and gpus and profile.slug != course.profile:
        course_profile = site.profile(course.profile)
        raise RequestError(f"Account {account} is the GPU budget of {course.display_name}: it "
                           f"pays for GPUs only in '{course_profile.display_name}' sessions, in "
                           "the course's reservation. Choose that profile, a CPU profile, or "
                           "another account.")

    chosen_qos = chosen.get("qos", "") or ""
    if chosen_qos and chosen_qos not in (qos or {}).get(account, []):
        allowed = ", ".join((qos or {}).get(account, [])) or "none"
        raise RequestError(f"QOS '{chosen_qos}' is not allowed on account {account}; "
                           f"allowed: {allowed}.")

    reservation = chosen.get("reservation", "") or ""
    if reservation:
        usable = usable_reservations(reservations, user, accounts)
        if profile.course and reservation not in reservations:
            raise RequestError(course_rules.window(site.course(profile.course), reservations)["text"])
        if reservation not in usable:
            raise RequestError(f"Reservation '{reservation}' is not one you may use.")
        res = usable[reservation]
        if res.accounts and account not in res.accounts:
            raise RequestError(f"Reservation '{reservation}' is for account "
                               f"{', '.join(res.accounts)}, not {account}.")
        if not res.active():
            if profile.course:
                raise RequestError(course_rules.window(site.course(profile.course),
                                                  reservations)["text"])
            start = (time.strftime("%Y-%m-%d %H:%M", time.localtime(res.start))
                     if res.start else "a later time")
            raise RequestError(f"Reservation '{reservation}' opens at {start}; "
                               "you can start a session in it then.")
    return SessionRequest(profile.slug, partition.name, gpu_type if gpus else "", gpus, cpus,
                          memory, format_minutes(minutes), account, reservation,
                          profile.idle_minutes, chosen_qos,
                          environment.name if environment else "")


def module_exists(module: str, folders, exists) -> bool:
    """Whether Lmod finds `module` (name/version, or name for its default) in one of the
    module tree's folders: a Lua or Tcl modulefile, or the name's folder."""
    return any(exists(f"{folder}/{module}.lua") or exists(f"{folder}/{module}")
               for folder in folders)


def check_modules(site: Site, request: SessionRequest, exists) -> None:
    """Refuse an environment whose modules the module tree lacks (a site file naming a module
    that was removed or not installed yet), before the job would fail at `module load`."""
    environment = site.environment(request.environment)
    if environment is None:
        return
    for module in environment.modules:
        if not module_exists(module, site.modules.path, exists):
            raise RequestError(f"The software environment {environment.display_name} needs the "
                               f"module {module}, which is not in the site's module tree "
                               f"({', '.join(site.modules.path)}). Nothing was submitted; "
                               "choose another environment, or tell the site.")


def check_nodes(request: SessionRequest, nodes: list[slurm.Node],
                reservations: Mapping[str, slurm.Reservation], held: set[str]) -> None:
    """Refuse a request that only nodes taking no jobs (drained, down, ...) could serve,
    rather than let it wait in the queue for them. `held`: nodes of others' reservations."""
    if request.reservation in reservations:
        allowed = slurm.expand_nodes(reservations[request.reservation].nodes)
    else:
        allowed = {n.name for n in nodes} - held
    if stuck := only_unusable_nodes(nodes, request.partition, request.gpu_type, request.gpus,
                                    allowed):
        raise RequestError(f"Every node that could run this session takes no jobs now: "
                           f"{unusable_words(stuck)}. Nothing was submitted: ask for fewer GPUs "
                           "or another partition, or try again later.")


def check_budget(request: SessionRequest, budgets: Mapping[str, slurm.Budget],
                 billing: Billing = Billing(), weights: str = "") -> None:
    """Refuse a request that the project's budget cannot pay for (`budgets` in minutes of
    the site's TRES, `weights`: the partition's TRESBillingWeights)."""
    budget = budgets.get(request.account)
    cost_min = request.cost(billing, weights) * 60
    if not cost_min or budget is None or budget.granted_min is None:
        return
    remaining = budget.remaining_min
    if remaining <= 0:
        raise RequestError(
            f"Project {request.account}'s budget is used up: "
            f"{billing.amount(budget.used_min / 60)} of {billing.amount(budget.granted_min / 60)}"
            f" used, {billing.amount(budget.held_min / 60)} held by running jobs. "
            + ("Choose a CPU profile or another project." if billing.by_gpu
               else "Choose another project."))
    if cost_min > remaining:
        raise RequestError(f"{request.describe_cost(billing, weights)}, but project "
                           f"{request.account} has {billing.amount(remaining / 60)} left. "
                           "Ask for less time or " + ("fewer GPUs." if billing.by_gpu
                                                      else "a smaller session."))
