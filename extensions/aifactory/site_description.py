"""The site description (`hub_config/site.yaml`): partitions' limits and the spawn profiles.

Profiles follow KubeSpawner's `profile_list` shape (display_name, slug, description, default,
profile_options/choices), with `slurm` in the place of `kubespawner_override`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from .billing import Billing

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
WALLTIME_RE = re.compile(r"^(?:(\d{1,2})-)?(\d{1,3}):(\d{2}):(\d{2})$")
FIELDS = ("partition", "gpu_type", "gpus", "cpus", "memory_gb", "walltime", "account",
          "qos", "reservation")
LIMIT_FIELDS = ("gpus", "cpus", "memory_gb", "walltime")
DEFAULT_PATH = Path(os.environ.get("AIFACTORY_SITE",
                                   os.environ.get("AIFACTORY_HUB_CONFIG", "/etc/aifactory/hub_config")
                                   + "/site.yaml"))


DASK_DEFAULTS = {
    "partition": "gpu", "gpu_type": "", "gpus_per_job": 1, "cpus_per_gpu": 8,
    "memory_gb_per_gpu": 60, "walltime": "01:00:00", "interface": "eth0",
    "local_directory": "/tmp", "python": "/opt/aifactory/venv/bin/python",
}


class SiteError(ValueError):
    """The site description is wrong; one sentence naming the entry."""


def walltime_minutes(text: str) -> int | None:
    """Minutes in a Slurm time "[D-]HH:MM:SS", or None when it is not one."""
    m = WALLTIME_RE.match(text)
    if not m:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    if minutes > 59 or seconds > 59:
        return None
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


def _fail(path, what):
    raise SiteError(f"{path}: {what}.")


def _check_slurm_values(path, where: str, values, partitions: dict[str, Partition]) -> dict:
    if not isinstance(values, dict):
        _fail(path, f"{where}: 'slurm' must be a mapping")
    for key, value in values.items():
        if key not in FIELDS:
            _fail(path, f"{where}: unknown field '{key}' (known: {', '.join(FIELDS)})")
        if key in ("gpus", "cpus", "memory_gb"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                _fail(path, f"{where}: {key} must be a whole number")
        elif key == "walltime":
            if not isinstance(value, str) or walltime_minutes(value) is None:
                _fail(path, f"{where}: walltime {value!r} is not [D-]HH:MM:SS")
        elif key == "partition" and value not in partitions:
            _fail(path, f"{where}: partition {value!r} is not in 'partitions'")
        elif not isinstance(value, str) or (value and not NAME_RE.match(value)):
            _fail(path, f"{where}: {key} {value!r} is not a valid name")
    return dict(values)


def load(path: str | Path = DEFAULT_PATH) -> Site:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SiteError(f"{path}: cannot be read ({e.strerror}).") from None
    except yaml.YAMLError:
        raise SiteError(f"{path}: is not valid YAML.") from None
    if not isinstance(data, dict):
        _fail(path, "must be a mapping")
    unknown = set(data) - {"billing", "partitions", "profiles", "coordinator_groups", "dask",
                           "courses"}
    if unknown:
        _fail(path, f"unknown key '{sorted(unknown)[0]}'")

    partitions = {}
    for name, p in (data.get("partitions") or {}).items():
        if not NAME_RE.match(str(name)) or not isinstance(p, dict):
            _fail(path, f"partition {name!r} must be a name with a mapping of limits")
        walltime = walltime_minutes(str(p.get("max_walltime", "")))
        numbers = [p.get(k) for k in ("gpus_per_node", "cpus_per_node", "memory_gb_per_node")]
        if walltime is None or not all(isinstance(n, int) and n >= 0 for n in numbers):
            _fail(path, f"partition {name}: needs gpus_per_node, cpus_per_node, "
                        "memory_gb_per_node (numbers) and max_walltime ([D-]HH:MM:SS)")
        types = p.get("gpu_types") or []
        if not all(isinstance(t, str) and NAME_RE.match(t) for t in types):
            _fail(path, f"partition {name}: gpu_types must be a list of names")
        partitions[name] = Partition(name, tuple(types), *numbers, walltime)
    if not partitions:
        _fail(path, "'partitions' must list at least one partition")

    profiles = []
    for i, raw in enumerate(data.get("profiles") or []):
        where = f"profiles[{i}]"
        if not isinstance(raw, dict):
            _fail(path, f"{where} must be a mapping")
        unknown = set(raw) - {"display_name", "slug", "description", "default", "idle_minutes",
                              "slurm", "limits", "fixed", "profile_options"}
        if unknown:
            _fail(path, f"{where}: unknown key '{sorted(unknown)[0]}'")
        slug = raw.get("slug", "")
        if not isinstance(slug, str) or not SLUG_RE.match(slug):
            _fail(path, f"{where}: slug {slug!r} must be lower-case letters, digits and '-'")
        where = f"profile {slug}"
        slurm = _check_slurm_values(path, where, raw.get("slurm") or {}, partitions)
        for needed in ("partition", "gpus", "cpus", "memory_gb", "walltime"):
            if needed not in slurm:
                _fail(path, f"{where}: 'slurm' must set {needed}")
        limits = raw.get("limits") or {}
        if not isinstance(limits, dict) or set(limits) - set(LIMIT_FIELDS):
            _fail(path, f"{where}: limits may set only {', '.join(LIMIT_FIELDS)}")
        _check_slurm_values(path, f"{where} limits", limits, partitions)
        fixed = raw.get("fixed") or []
        if not isinstance(fixed, list) or set(fixed) - set(FIELDS):
            _fail(path, f"{where}: fixed may list only {', '.join(FIELDS)}")
        options = []
        for name, opt in (raw.get("profile_options") or {}).items():
            if not NAME_RE.match(str(name)) or not isinstance(opt, dict) or not opt.get("choices"):
                _fail(path, f"{where}: profile option {name!r} needs choices")
            choices = []
            for key, c in opt["choices"].items():
                if not SLUG_RE.match(str(key)) or not isinstance(c, dict):
                    _fail(path, f"{where}: choice {key!r} of {name} is not valid")
                choices.append(Choice(str(key), str(c.get("display_name", key)),
                                      bool(c.get("default", False)),
                                      _check_slurm_values(path, f"{where} option {name}",
                                                          c.get("slurm") or {}, partitions)))
            options.append(ProfileOption(str(name), str(opt.get("display_name", name)),
                                         tuple(choices)))
        idle = raw.get("idle_minutes", 60)
        if isinstance(idle, bool) or not isinstance(idle, (int, float)) or idle <= 0:
            _fail(path, f"{where}: idle_minutes must be a positive number")
        profiles.append(Profile(slug, str(raw.get("display_name", slug)),
                                str(raw.get("description", "")), bool(raw.get("default", False)),
                                idle, slurm, dict(limits), frozenset(fixed), tuple(options)))
    if not profiles:
        _fail(path, "'profiles' must list at least one profile")
    slugs = [p.slug for p in profiles]
    if len(set(slugs)) != len(slugs):
        _fail(path, "two profiles have the same slug")
    if sum(p.default for p in profiles) > 1:
        _fail(path, "only one profile may be the default")
    billing = _load_billing(path, data.get("billing"))
    coordinator_groups = data.get("coordinator_groups") or {}
    if not isinstance(coordinator_groups, dict) or not all(
            NAME_RE.match(str(a)) and isinstance(g, list) and g
            and all(isinstance(x, str) and NAME_RE.match(x) for x in g)
            for a, g in coordinator_groups.items()):
        _fail(path, "coordinator_groups must map account names to lists of hub group names")
    dask = dict(DASK_DEFAULTS)
    given = data.get("dask") or {}
    if not isinstance(given, dict) or set(given) - set(DASK_DEFAULTS):
        _fail(path, f"dask may set only {', '.join(DASK_DEFAULTS)}")
    for key, value in given.items():
        if type(value) is not type(DASK_DEFAULTS[key]):
            _fail(path, f"dask: {key} must be a {type(DASK_DEFAULTS[key]).__name__}")
    dask.update(given)
    if dask["partition"] not in partitions or walltime_minutes(dask["walltime"]) is None:
        _fail(path, "dask: partition must be one of the partitions, walltime [D-]HH:MM:SS")
    courses = _load_courses(path, data.get("courses") or [], profiles)
    if all(p.slug in {c.profile for c in courses} for p in profiles):
        _fail(path, "at least one profile must be for everyone, not a course's")
    for course in courses:
        i = next(i for i, p in enumerate(profiles) if p.slug == course.profile)
        p = profiles[i]
        # Participants get the course's account and reservation, and cannot change them.
        profiles[i] = replace(p, course=course.name, default=False,
                              slurm={**p.slurm, "account": course.account,
                                     "reservation": course.reservation},
                              fixed=p.fixed | {"account", "reservation", "partition"})
    return Site(billing, partitions, tuple(profiles),
                {str(a): tuple(g) for a, g in coordinator_groups.items()}, dask, courses)


def _load_billing(path, raw) -> Billing:
    if raw is None:
        return Billing()
    if not isinstance(raw, dict) or set(raw) - {"tres", "unit", "units_per_gpu_hour"}:
        _fail(path, "billing may set only tres, unit and units_per_gpu_hour")
    tres = raw.get("tres", "gres/gpu")
    if tres == "gres/gpu":
        if set(raw) != {"tres"}:
            _fail(path, "billing: with tres gres/gpu budgets are GPU-hours; unit and "
                        "units_per_gpu_hour are for tres billing")
        return Billing()
    if tres != "billing":
        _fail(path, f"billing: tres {tres!r} must be gres/gpu or billing")
    unit, price = raw.get("unit"), raw.get("units_per_gpu_hour")
    if not isinstance(unit, str) or not UNIT_RE.match(unit) or unit.lower().startswith("gpu"):
        _fail(path, "billing: unit must be a short name such as SBU (letters, digits, '-'), "
                    "not GPU-hours")
    if isinstance(price, bool) or not isinstance(price, (int, float)) or not 0 < price < 1e6:
        _fail(path, "billing: units_per_gpu_hour must be a positive number")
    return Billing("billing", unit, float(price))


UNIT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,19}$")
GIT_URL_RE = re.compile(r"^(https://|file:///)[A-Za-z0-9_.~/:@%+-]+$")
PATH_RE = re.compile(r"^/[A-Za-z0-9_./+-]*$")


def _load_courses(path, raw_courses, profiles: list[Profile]) -> tuple[Course, ...]:
    if not isinstance(raw_courses, list):
        _fail(path, "courses must be a list")
    courses = []
    for i, raw in enumerate(raw_courses):
        keys = {"name", "display_name", "account", "reservation", "participants", "instructors",
                "profile", "material", "material_ref"}
        if not isinstance(raw, dict) or set(raw) - keys:
            _fail(path, f"courses[{i}] may set only {', '.join(sorted(keys))}")
        name = raw.get("name", "")
        if not isinstance(name, str) or not SLUG_RE.match(name):
            _fail(path, f"courses[{i}]: name {name!r} must be lower-case letters, digits and '-'")
        where = f"course {name}"
        for key in ("account", "reservation", "participants", "instructors"):
            if not isinstance(raw.get(key), str) or not NAME_RE.match(raw[key]):
                _fail(path, f"{where}: {key} must be a name")
        slug = raw.get("profile")
        profile = next((p for p in profiles if p.slug == slug), None)
        if profile is None:
            _fail(path, f"{where}: profile {slug!r} is not in 'profiles'")
        for key in ("account", "reservation"):
            if profile.slurm.get(key, raw[key]) != raw[key]:
                _fail(path, f"{where}: its profile {slug} sets another {key}")
        if raw["participants"] == raw["instructors"]:
            _fail(path, f"{where}: participants and instructors must be different groups")
        material, ref = raw.get("material", ""), raw.get("material_ref", "")
        if material and not (isinstance(material, str) and (PATH_RE.match(material)
                                                             and ".." not in material
                                                             or GIT_URL_RE.match(material))):
            _fail(path, f"{where}: material must be an absolute folder or an https:// or "
                        "file:/// git URL")
        if ref and not (isinstance(ref, str) and re.match(r"^[A-Za-z0-9_./-]{1,100}$", ref)
                        and material and not material.startswith("/")):
            _fail(path, f"{where}: material_ref is a branch or tag of a git material")
        courses.append(Course(name, str(raw.get("display_name", name)), raw["account"],
                              raw["reservation"], raw["participants"], raw["instructors"],
                              slug, material, ref))
    for key in ("name", "profile", "account", "participants", "instructors"):
        values = [getattr(c, key) for c in courses]
        if len(set(values)) != len(values):
            _fail(path, f"two courses have the same {key}")
    return tuple(courses)


_cache: dict[str, tuple[float, Site]] = {}


def load_cached(path: str | Path = DEFAULT_PATH) -> Site:
    """`load`, again only when the file changed: edits apply without restarting the hub."""
    key = str(path)
    mtime = Path(path).stat().st_mtime
    if key not in _cache or _cache[key][0] != mtime:
        _cache[key] = (mtime, load(path))
    return _cache[key][1]
