"""The site description (`hub_config/site.yaml`): partitions' limits and the spawn profiles.

Profiles follow KubeSpawner's `profile_list` shape (display_name, slug, description, default,
profile_options/choices), with `slurm` in the place of `kubespawner_override`. `load` checks
the file's shape against SCHEMA (aifactory.checked_yaml), then the rules between its entries.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from . import checked_yaml, names
from .billing import Billing

NAME_RE = names.ACCOUNT_RE  # dask.py checks an account with it
FIELDS = ("partition", "gpu_type", "gpus", "cpus", "memory_gb", "walltime", "account",
          "qos", "reservation")
LIMIT_FIELDS = ("gpus", "cpus", "memory_gb", "walltime")
DEFAULT_PATH = Path(os.environ.get("AIFACTORY_SITE",
                                   os.environ.get("AIFACTORY_HUB_CONFIG", "/etc/aifactory/hub_config")
                                   + "/site.yaml"))


def shared_python() -> str:
    """The shared environment's Python: the one aifactory is installed in (its folder with
    pyvenv.cfg, found from the package's real path, so also from a kernel of a person's own
    environment that imports aifactory through the link), else AIFACTORY_VENV's."""
    for folder in Path(__file__).resolve().parents:
        if (folder / "pyvenv.cfg").exists():
            return str(folder / "bin/python")
    return os.path.join(os.environ.get("AIFACTORY_VENV", "/opt/aifactory/venv"), "bin/python")


DASK_DEFAULTS = {
    "partition": "gpu", "gpu_type": "", "gpus_per_job": 1, "cpus_per_gpu": 8,
    "memory_gb_per_gpu": 60, "walltime": "01:00:00", "interface": "eth0",
    "local_directory": "/tmp", "python": shared_python(),
}


class SiteError(checked_yaml.CheckedYamlError):
    """The site description is wrong; one sentence naming the file, the line and the entry."""


def walltime_minutes(text: str) -> int | None:
    """Minutes in a Slurm time "[D-]HH:MM:SS", or None when it is not one."""
    m = names.SLURM_TIME_RE.match(text)
    if not m:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def format_minutes(minutes: int) -> str:
    """Minutes as Slurm's "[D-]HH:MM:SS"."""
    days, rest = divmod(minutes, 1440)
    text = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text


@dataclass(frozen=True)
class Partition:
    name: str
    gpu_types: tuple[str, ...]
    gpus_per_node: int
    cpus_per_node: int
    memory_gb_per_node: int
    max_walltime_min: int


@dataclass(frozen=True)
class Choice:
    key: str
    display_name: str
    default: bool
    slurm: dict
    description: str = ""


@dataclass(frozen=True)
class Environment:
    """Software a session runs with: Lmod modules loaded before JupyterLab starts."""
    name: str
    display_name: str
    description: str
    modules: tuple[str, ...]
    partitions: tuple[str, ...]  # where it is offered
    default: bool = False


@dataclass(frozen=True)
class Modules:
    """The site's Lmod: the shell script that defines `module`, and the module tree."""
    init: str = "/usr/share/lmod/lmod/init/bash"
    path: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProfileOption:
    name: str
    display_name: str
    choices: tuple[Choice, ...]

    def default_choice(self) -> Choice:
        return next((c for c in self.choices if c.default), self.choices[0])


@dataclass(frozen=True)
class Profile:
    slug: str
    display_name: str
    description: str
    default: bool
    idle_minutes: int
    slurm: dict
    limits: dict
    fixed: frozenset[str]
    options: tuple[ProfileOption, ...] = field(default_factory=tuple)
    # The course whose participants alone may use this profile ("" for everyone's profiles).
    course: str = ""


@dataclass(frozen=True)
class Course:
    """A workshop or course: its Slurm account and reservation, its hub groups, its profile."""
    name: str
    display_name: str
    account: str
    reservation: str
    participants: str       # hub group of the participants
    instructors: str        # hub group of the instructors
    profile: str            # slug of the profile participants start
    material: str = ""      # a folder copied into participants' homes, or a git URL
    material_ref: str = ""  # the branch or tag of a git `material`

    @property
    def material_is_git(self) -> bool:
        return bool(self.material) and not self.material.startswith("/")

    def spawn_url(self, base_url: str = "/hub/") -> str:
        """The spawn link (JupyterHub 6 names user options `opt-<name>`)."""
        return f"{base_url}spawn?opt-profile={self.profile}"


@dataclass(frozen=True)
class Site:
    billing: Billing
    partitions: dict[str, Partition]
    profiles: tuple[Profile, ...]
    # Hub groups whose members see per-user usage of a project, besides its Slurm coordinators.
    coordinator_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Defaults of aifactory.dask.GPUCluster (DASK_DEFAULTS, overridden by the file's `dask`).
    dask: dict = field(default_factory=lambda: dict(DASK_DEFAULTS))
    courses: tuple[Course, ...] = ()
    environments: tuple[Environment, ...] = ()
    modules: Modules = Modules()

    def environment(self, name: str) -> Environment | None:
        return next((e for e in self.environments if e.name == name), None)

    def profile(self, slug: str) -> Profile | None:
        return next((p for p in self.profiles if p.slug == slug), None)

    def course(self, name: str) -> Course | None:
        return next((c for c in self.courses if c.name == name), None)

    def course_of_account(self, account: str) -> Course | None:
        return next((c for c in self.courses if c.account == account), None)

    def profiles_for(self, groups) -> tuple[Profile, ...]:
        """The profiles a member of these hub groups may start: everyone's, and those of the
        courses they take or teach."""
        groups = set(groups)
        mine = {c.profile for c in self.courses if {c.participants, c.instructors} & groups}
        return tuple(p for p in self.profiles if not p.course or p.slug in mine)

    @property
    def default_profile(self) -> Profile:
        return next((p for p in self.profiles if p.default),
                    next(p for p in self.profiles if not p.course))


def profile_name(options: Mapping[str, Any] | None) -> str:
    """The profile slug in stored options as `resolve` reads it (a REST body may hold
    `[" h100-4"]`), so what looks a profile up finds the one that was started."""
    value = (options or {}).get("profile", "")
    if isinstance(value, (list, tuple)):
        value = value[0] if len(value) == 1 else ""
    return value.strip() if isinstance(value, str) else ""


def _or_empty(kind: tuple) -> tuple:
    """A (str, pattern, what) schema that also takes "" (no GPU type, the default account)."""
    return (str, re.compile(rf"\Z|{kind[1].pattern}"), f"{kind[2]}, or empty")


# The file's schema (aifactory.checked_yaml), in parts.
NAME_WORDS = "(lower-case letters, digits, '-' and '_', starting with a letter)"
PARTITION = (str, names.PARTITION_RE, f"a partition name {NAME_WORDS}")
GPU_TYPE = (str, names.GPU_TYPE_RE, "a GPU type like h100")
ACCOUNT = (str, names.ACCOUNT_RE, f"a Slurm account name {NAME_WORDS}")
RESERVATION = (str, names.RESERVATION_RE, f"a reservation name {NAME_WORDS}")
GROUP = (str, names.GROUP_RE, f"a hub group name {NAME_WORDS}")
WALLTIME = (str, names.SLURM_TIME_RE, "[D-]HH:MM:SS")
WHOLE = (int, 0, None)
# What a profile, its limits and its options' choices may ask of Slurm (FIELDS, in order).
SLURM_FIELDS = {
    "partition": PARTITION, "gpu_type": _or_empty(GPU_TYPE), "gpus": WHOLE, "cpus": WHOLE,
    "memory_gb": WHOLE, "walltime": WALLTIME, "account": _or_empty(ACCOUNT),
    "qos": _or_empty((str, names.QOS_RE, f"a QOS name {NAME_WORDS}")),
    "reservation": _or_empty(RESERVATION),
}
# A profile's `slurm` sets at least these; its limits and its choices set what they change.
NEEDED = ("partition", "gpus", "cpus", "memory_gb", "walltime")
SLURM = {key + "?" * (key not in NEEDED): kind for key, kind in SLURM_FIELDS.items()}
SOME_SLURM = {key + "?": kind for key, kind in SLURM_FIELDS.items()}
CHOICE = {"display_name?": str, "default?": bool, "slurm?": SOME_SLURM}
OPTION = {"display_name?": str, "choices": ("mapping", (str, names.SLUG_RE, "a choice key "
                                            "(lower-case letters, digits and '-')"), CHOICE, ...)}
ENVIRONMENT_NAME = (str, names.SLUG_RE, "an environment name (lower-case letters, digits and '-')")
MODULE = (str, names.MODULE_RE, "a module name like classic-ml/2025.1")
FOLDER = (str, re.compile(r"^/[A-Za-z0-9_./+-]{0,200}\Z"), "an absolute path")
ENVIRONMENT = {
    "name": ENVIRONMENT_NAME, "display_name?": str, "description?": str,
    "modules": [MODULE], "partitions?": [PARTITION, ...], "default?": bool,
}
PROFILE = {
    "display_name?": str,
    "slug": (str, names.SLUG_RE, "a profile slug (lower-case letters, digits and '-')"),
    "description?": str, "default?": bool, "idle_minutes?": (float, 0, None), "slurm": SLURM,
    "limits?": {key + "?": SLURM_FIELDS[key] for key in LIMIT_FIELDS},
    "fixed?": [set(FIELDS)],
    "profile_options?": ("mapping", (str, names.OPTION_RE, f"an option name {NAME_WORDS}"), OPTION),
    # The environments offered (default: all of those offered on the profile's partition).
    "environments?": [ENVIRONMENT_NAME, ...],
}
COURSE = {
    "name": (str, names.COURSE_RE, "a course name (lower-case letters, digits and '-', "
                                   "starting with a letter)"),
    "display_name?": str, "account": ACCOUNT, "reservation": RESERVATION, "participants": GROUP,
    "instructors": GROUP, "profile": str, "material?": str, "material_ref?": str,
}
SCHEMA = {
    # tres, unit and units_per_gpu_hour are read together, by _billing.
    "billing?": {"tres?": str, "unit?": str, "units_per_gpu_hour?": None},
    "partitions": ("mapping", PARTITION, {
        "gpu_types?": [GPU_TYPE], "gpus_per_node": WHOLE, "cpus_per_node": WHOLE,
        "memory_gb_per_node": WHOLE, "max_walltime": WALLTIME}, ...),
    "profiles": [PROFILE, ...],
    "coordinator_groups?": ("mapping", ACCOUNT, [GROUP, ...]),
    "dask?": {"partition?": PARTITION, "gpu_type?": _or_empty(GPU_TYPE), "gpus_per_job?": int,
              "cpus_per_gpu?": int, "memory_gb_per_gpu?": int, "walltime?": WALLTIME,
              "interface?": str, "local_directory?": str, "python?": str},
    "courses?": [COURSE],
    "modules?": {"init?": FOLDER, "path": [FOLDER, ...]},
    "environments?": [ENVIRONMENT, ...],
}


def load(path: str | Path = DEFAULT_PATH) -> Site:
    doc = checked_yaml.load(path, SCHEMA, SiteError)
    data = doc.data
    partitions = {name: Partition(name, tuple(p.get("gpu_types") or ()), p["gpus_per_node"],
                                  p["cpus_per_node"], p["memory_gb_per_node"],
                                  walltime_minutes(p["max_walltime"]))
                  for name, p in data["partitions"].items()}
    profiles = [_profile(doc, i, raw, partitions) for i, raw in enumerate(data["profiles"])]
    slugs = [p.slug for p in profiles]
    for i, slug in enumerate(slugs):
        if slug in slugs[:i]:
            doc.fail(f"profiles[{i}].slug", "two profiles have the same slug")
    defaults = [i for i, p in enumerate(profiles) if p.default]
    if len(defaults) > 1:
        doc.fail(f"profiles[{defaults[1]}].default", "only one profile may be the default")
    billing = _billing(doc, data.get("billing"))
    dask = {**DASK_DEFAULTS, **data.get("dask", {})}
    if dask["partition"] not in partitions:
        doc.fail("dask.partition", f"dask: partition {dask['partition']!r} is not in 'partitions'")
    courses = _courses(doc, data.get("courses", []), profiles)
    if all(p.slug in {c.profile for c in courses} for p in profiles):
        doc.fail("courses", "at least one profile must be for everyone, not a course's")
    for course in courses:
        i = next(i for i, p in enumerate(profiles) if p.slug == course.profile)
        p = profiles[i]
        # Participants get the course's account and reservation, and cannot change them.
        profiles[i] = replace(p, course=course.name, default=False,
                              slurm={**p.slurm, "account": course.account,
                                     "reservation": course.reservation},
                              fixed=p.fixed | {"account", "reservation", "partition"})
    coordinator_groups = {a: tuple(g) for a, g in data.get("coordinator_groups", {}).items()}
    environments = _environments(doc, data.get("environments", []), partitions)
    for i, p in enumerate(profiles):
        profiles[i] = _with_environment_option(doc, i, p, data["profiles"][i], environments)
    raw_modules = data.get("modules")
    if environments and not raw_modules:
        doc.fail("environments", "environments need 'modules' (the Lmod init script and the "
                                 "module tree's folders)")
    modules = (Modules(raw_modules.get("init", Modules.init), tuple(raw_modules["path"]))
               if raw_modules else Modules())
    return Site(billing, partitions, tuple(profiles), coordinator_groups, dask, courses,
                environments, modules)


ENVIRONMENT_OPTION = "environment"


def _environments(doc, raw_list: list, partitions) -> tuple[Environment, ...]:
    environments = []
    for i, raw in enumerate(raw_list):
        key, name = f"environments[{i}]", raw["name"]
        if name in [e.name for e in environments]:
            doc.fail(f"{key}.name", f"two environments are named {name}")
        for words in ("display_name", "description"):
            if any(ord(c) < 32 for c in raw.get(words, "")):  # it goes into the job's script
                doc.fail(f"{key}.{words}", f"environment {name}: {words} must be one line of "
                                           "text, without control characters")
        offered = tuple(raw.get("partitions") or partitions)
        for partition in offered:
            if partition not in partitions:
                doc.fail(f"{key}.partitions", f"environment {name}: partition {partition!r} "
                                              "is not in 'partitions'")
        environments.append(Environment(name, raw.get("display_name", name),
                                        raw.get("description", ""), tuple(raw["modules"]),
                                        offered, raw.get("default", False)))
    if sum(e.default for e in environments) > 1:
        doc.fail("environments", "only one environment may be the default")
    return tuple(environments)


def _with_environment_option(doc, i: int, profile: Profile, raw: dict,
                             environments: tuple[Environment, ...]) -> Profile:
    """The profile with an "environment" option: the environments it offers on its partition
    (the default one first)."""
    key = f"profiles[{i}]"
    wanted = raw.get("environments")
    if wanted is not None and not environments:
        doc.fail(f"{key}.environments", f"profile {profile.slug}: the site has no environments")
    for name in wanted or ():
        if not any(e.name == name for e in environments):
            doc.fail(f"{key}.environments", f"profile {profile.slug}: environment {name!r} is "
                                            "not in 'environments'")
    if not environments:
        return profile
    if any(o.name == ENVIRONMENT_OPTION for o in profile.options):
        doc.fail(f"{key}.profile_options", f"profile {profile.slug}: the environment option "
                                           "is made from 'environments'; remove it here")
    offered = [e for e in environments if (wanted is None or e.name in wanted)
               and profile.slurm["partition"] in e.partitions]
    if not offered:
        doc.fail(f"{key}.environments", f"profile {profile.slug}: no environment is offered on "
                                        f"its partition {profile.slurm['partition']}")
    offered.sort(key=lambda e: not e.default)
    # Each choice's key is its environment's name.
    choices = tuple(Choice(e.name, e.display_name, e is offered[0], {}, e.description)
                    for e in offered)
    return replace(profile, options=(*profile.options,
                                     ProfileOption(ENVIRONMENT_OPTION, "Software", choices)))


def _profile(doc, i: int, raw: dict, partitions: dict[str, Partition]) -> Profile:
    slug = raw["slug"]
    where, key = f"profile {slug}", f"profiles[{i}]"
    _check_partition(doc, f"{key}.slurm", where, raw["slurm"], partitions)
    options = []
    for name, opt in raw.get("profile_options", {}).items():
        choices = []
        for choice, c in opt["choices"].items():
            _check_partition(doc, f"{key}.profile_options.{name}.choices.{choice}.slurm",
                             f"{where} option {name}", c.get("slurm", {}), partitions)
            choices.append(Choice(choice, c.get("display_name", choice), c.get("default", False),
                                  dict(c.get("slurm", {}))))
        options.append(ProfileOption(name, opt.get("display_name", name), tuple(choices)))
    return Profile(slug, raw.get("display_name", slug), raw.get("description", ""),
                   raw.get("default", False), raw.get("idle_minutes", 60), dict(raw["slurm"]),
                   dict(raw.get("limits", {})), frozenset(raw.get("fixed", ())), tuple(options))


def _check_partition(doc, key: str, where: str, values: dict, partitions) -> None:
    if "partition" in values and values["partition"] not in partitions:
        doc.fail(f"{key}.partition",
                 f"{where}: partition {values['partition']!r} is not in 'partitions'")


def _billing(doc, raw: dict | None) -> Billing:
    """The billing combinations: GPU-hours alone, or a unit with its GPU-hour price."""
    if raw is None:
        return Billing()
    tres = raw.get("tres", "gres/gpu")
    if tres == "gres/gpu":
        if set(raw) - {"tres"}:
            doc.fail("billing", "billing: with tres gres/gpu budgets are GPU-hours; unit and "
                                "units_per_gpu_hour are for tres billing")
        return Billing()
    if tres != "billing":
        doc.fail("billing.tres", f"billing: tres {tres!r} must be gres/gpu or billing")
    unit, price = raw.get("unit"), raw.get("units_per_gpu_hour")
    if not isinstance(unit, str) or not names.UNIT_RE.match(unit) or unit.lower().startswith("gpu"):
        doc.fail("billing.unit", "billing: unit must be a short name such as SBU (letters, "
                                 "digits, '-'), not GPU-hours")
    if isinstance(price, bool) or not isinstance(price, (int, float)) or not 0 < price < 1e6:
        doc.fail("billing.units_per_gpu_hour", "billing: units_per_gpu_hour must be a positive "
                                               "number")
    return Billing("billing", unit, float(price))


GIT_URL_RE = re.compile(r"^(https://|file:///)[A-Za-z0-9_.~/:@%+-]+\Z")
PATH_RE = re.compile(r"^/[A-Za-z0-9_./+-]*\Z")
GIT_REF_RE = re.compile(r"^[A-Za-z0-9_./-]{1,100}\Z")


def _courses(doc, raw_courses: list, profiles: list[Profile]) -> tuple[Course, ...]:
    courses = []
    for i, raw in enumerate(raw_courses):
        name, slug, key = raw["name"], raw["profile"], f"courses[{i}]"
        where = f"course {name}"
        profile = next((p for p in profiles if p.slug == slug), None)
        if profile is None:
            doc.fail(f"{key}.profile", f"{where}: profile {slug!r} is not in 'profiles'")
        for field_name in ("account", "reservation"):
            if profile.slurm.get(field_name, raw[field_name]) != raw[field_name]:
                doc.fail(f"{key}.{field_name}", f"{where}: its profile {slug} sets another "
                                                f"{field_name}")
        if raw["participants"] == raw["instructors"]:
            doc.fail(f"{key}.instructors",
                     f"{where}: participants and instructors must be different groups")
        material, ref = raw.get("material", ""), raw.get("material_ref", "")
        if material and not (PATH_RE.match(material) and ".." not in material
                             or GIT_URL_RE.match(material)):
            doc.fail(f"{key}.material", f"{where}: material must be an absolute folder or an "
                                        "https:// or file:/// git URL")
        if ref and not (GIT_REF_RE.match(ref) and material and not material.startswith("/")):
            doc.fail(f"{key}.material_ref",
                     f"{where}: material_ref is a branch or tag of a git material")
        courses.append(Course(name, raw.get("display_name", name), raw["account"],
                              raw["reservation"], raw["participants"], raw["instructors"],
                              slug, material, ref))
    for field_name in ("name", "profile", "account", "participants", "instructors"):
        values = [getattr(c, field_name) for c in courses]
        for i, value in enumerate(values):
            if value in values[:i]:
                doc.fail(f"courses[{i}].{field_name}", f"two courses have the same {field_name}")
    return tuple(courses)


_cache: dict[str, tuple[float, Site]] = {}


def load_cached(path: str | Path = DEFAULT_PATH) -> Site:
    """`load`, again only when the file changed: edits apply without restarting the hub."""
    key = str(path)
    mtime = Path(path).stat().st_mtime
    if key not in _cache or _cache[key][0] != mtime:
        _cache[key] = (mtime, load(path))
    return _cache[key][1]
