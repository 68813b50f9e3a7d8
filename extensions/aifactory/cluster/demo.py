"""The local cluster's description (`hub_config/cluster/demo.yaml`): load and validate.

Every value here ends up in a Slurm config file, a sacctmgr call or a Unix user, so each is
checked against a strict pattern before anything is changed. A broken file gives one
`DemoFileError` sentence that names the file and the entry.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..billing import WeightsError, parse_weights

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
GPU_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,15}$")
SLURM_TIME_RE = re.compile(r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$")
BUDGET_PERIODS = {"monthly": "MONTHLY", "quarterly": "QUARTERLY", "yearly": "YEARLY"}
ACCOUNT_KINDS = ("research", "course")
# Names Slurm or Debian already use; a demo user must not take them over.
RESERVED_USERS = {"root", "slurm", "munge", "mysql", "daemon", "nobody", "admin"}


class DemoFileError(ValueError):
    """The demo description is not valid; the message is one sentence."""


@dataclass(frozen=True)
class NodeSpec:
    name: str
    address: str
    cpus: int
    memory_mb: int
    gpus: int = 0
    gpu_type: str = ""


@dataclass(frozen=True)
class PartitionSpec:
    name: str
    nodes: tuple[str, ...]
    default: bool = False
    max_time: str = "1-00:00:00"
    # TRESBillingWeights where the site bills in units (site.yaml `billing: {tres: billing}`)
    billing_weights: str = ""


@dataclass(frozen=True)
class AccountSpec:
    name: str
    description: str
    kind: str
    gpu_hours: int
    coordinators: tuple[str, ...]
    users: tuple[str, ...]


@dataclass(frozen=True)
class UserSpec:
    name: str
    default_account: str


@dataclass(frozen=True)
class ReservationSpec:
    name: str
    account: str
    nodes: tuple[str, ...]
    days: int
    starts_in_days: int = 0


@dataclass(frozen=True)
class Demo:
    cluster: str
    bridge: str
    subnet: ipaddress.IPv4Network
    nodes: tuple[NodeSpec, ...]
    partitions: tuple[PartitionSpec, ...]
    budget_period: str
    accounts: tuple[AccountSpec, ...]
    users: tuple[UserSpec, ...]
    login_group: str
    reservations: tuple[ReservationSpec, ...] = field(default_factory=tuple)
    # Unix groups (the hub's course groups are read from them) and their members.
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Course name -> a folder of this checkout installed as that course's material.
    material: dict[str, str] = field(default_factory=dict)

    @property
    def controller_address(self) -> str:
        return str(next(self.subnet.hosts()))

    @property
    def gpu_nodes(self) -> tuple[NodeSpec, ...]:
        return tuple(n for n in self.nodes if n.gpus)

    @property
    def slurm_budget_period(self) -> str:
        return BUDGET_PERIODS[self.budget_period]


class _Reader:
    """Typed access to one mapping of the file, with the entry's name for error messages."""

    def __init__(self, data, where: str, path: Path):
        self.where, self.path = where, path
        if not isinstance(data, dict):
            self.fail(f"{where} must be a mapping")
        self.data = data

    def fail(self, what: str):
        raise DemoFileError(f"{self.path}: {what}.")

    def only(self, *keys: str) -> None:
        unknown = sorted(set(self.data) - set(keys))
        if unknown:
            self.fail(f"{self.where} has unknown key '{unknown[0]}'")

    def get(self, key: str, kind: type, default=...):
        if key not in self.data:
            if default is ...:
                self.fail(f"{self.where} is missing '{key}'")
            return default
        value = self.data[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            self.fail(f"{self.where}: '{key}' must be a whole number, not {value!r}")
        if kind is str and not isinstance(value, str):
            self.fail(f"{self.where}: '{key}' must be text, not {value!r}")
        if kind is bool and not isinstance(value, bool):
            self.fail(f"{self.where}: '{key}' must be true or false, not {value!r}")
        if kind is list and not isinstance(value, list):
            self.fail(f"{self.where}: '{key}' must be a list, not {value!r}")
        return value

    def name(self, key: str, default=...) -> str:
        value = self.get(key, str, default)
        if value is not None and not NAME_RE.match(value):
            self.fail(f"{self.where}: '{key}' {value!r} is not a valid name "
                      "(lower-case letters, digits, '-' and '_', starting with a letter)")
        return value

    def names(self, key: str) -> tuple[str, ...]:
        values = self.get(key, list, [])
        for v in values:
            if not isinstance(v, str) or not NAME_RE.match(v):
                self.fail(f"{self.where}: '{key}' has an invalid name {v!r}")
        if len(set(values)) != len(values):
            self.fail(f"{self.where}: '{key}' lists a name twice")
        return tuple(values)

    def number(self, key: str, low: int, high: int, default=...) -> int:
        value = self.get(key, int, default)
        if not low <= value <= high:
            self.fail(f"{self.where}: '{key}' must be between {low} and {high}, not {value}")
        return value

    def entries(self, key: str, required: bool = True) -> list:
        values = self.get(key, list, ... if required else [])
        if required and not values:
            self.fail(f"'{key}' must list at least one entry")
        return values


def load(path: str | Path) -> Demo:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise DemoFileError(f"{path}: cannot be read ({e.strerror}).") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise DemoFileError(f"{path}: is not valid YAML{at}.") from None
    top = _Reader(data, "the file", path)
    top.only("cluster", "network", "nodes", "partitions", "budget_period", "accounts",
             "users", "login_group", "reservations", "groups", "material")

    net = _Reader(top.get("network", dict), "network", path)
    net.only("bridge", "subnet")
    bridge = net.get("bridge", str)
    if not re.match(r"^[a-z][a-z0-9]{1,11}$", bridge):
        net.fail(f"network: bridge {bridge!r} is not a valid interface name")
    try:
        subnet = ipaddress.IPv4Network(net.get("subnet", str))
    except ValueError:
        net.fail(f"network: subnet {net.data['subnet']!r} is not an IPv4 network like 10.77.0.0/24")
    if not subnet.is_private or subnet.prefixlen > 28:
        net.fail(f"network: subnet {subnet} must be a private network of at least 16 addresses")
    controller = str(next(subnet.hosts()))

    nodes, addresses = [], {controller}
    for i, raw in enumerate(top.entries("nodes")):
        r = _Reader(raw, f"nodes[{i}]", path)
        r.only("name", "address", "cpus", "memory_mb", "gpus", "gpu_type")
        name = r.name("name")
        r.where = f"node {name}"
        address = r.get("address", str)
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            r.fail(f"node {name}: address {address!r} is not an IPv4 address")
        if ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address):
            r.fail(f"node {name}: address {address} is not a host address in {subnet}")
        if address in addresses:
            r.fail(f"node {name}: address {address} is already taken")
        addresses.add(address)
        gpus = r.number("gpus", 0, 16, 0)
        gpu_type = r.get("gpu_type", str, "")
        if gpus and not GPU_TYPE_RE.match(gpu_type):
            r.fail(f"node {name}: a GPU node needs a gpu_type like 'h100'")
        nodes.append(NodeSpec(name, address, r.number("cpus", 1, 1024),
                              r.number("memory_mb", 512, 16_000_000), gpus, gpu_type if gpus else ""))
    _unique(path, "node", [n.name for n in nodes])
    node_names = {n.name for n in nodes}

    partitions = []
    for i, raw in enumerate(top.entries("partitions")):
        r = _Reader(raw, f"partitions[{i}]", path)
        r.only("name", "nodes", "default", "max_time", "billing_weights")
        name = r.name("name")
        members = r.names("nodes")
        missing = [n for n in members if n not in node_names]
        if not members or missing:
            r.fail(f"partition {name}: node {missing[0] if missing else '(none)'} is not in 'nodes'")
        max_time = r.get("max_time", str, "1-00:00:00")
        if not SLURM_TIME_RE.match(max_time):
            r.fail(f"partition {name}: max_time {max_time!r} is not a Slurm time like 2-00:00:00")
        weights = r.get("billing_weights", str, "")
        try:
            parse_weights(weights)
        except WeightsError as e:
            r.fail(f"partition {name}: billing_weights: {e}")
        partitions.append(PartitionSpec(name, members, r.get("default", bool, False), max_time,
                                        weights))
    _unique(path, "partition", [p.name for p in partitions])
    if sum(p.default for p in partitions) != 1:
        raise DemoFileError(f"{path}: exactly one partition must have 'default: true'.")

    users = []
    for i, raw in enumerate(top.entries("users")):
        r = _Reader(raw, f"users[{i}]", path)
        r.only("name", "default_account")
        name = r.name("name")
        if name in RESERVED_USERS:
            r.fail(f"user {name}: that name belongs to the system")
        users.append(UserSpec(name, r.name("default_account")))
    _unique(path, "user", [u.name for u in users])
    user_names = {u.name for u in users}

    accounts = []
    for i, raw in enumerate(top.entries("accounts")):
        r = _Reader(raw, f"accounts[{i}]", path)
        r.only("name", "description", "kind", "gpu_hours", "coordinators", "users")
        name = r.name("name")
        description = r.get("description", str, name)
        if not re.match(r"^[\w .,:()/+-]{1,80}$", description):
            r.fail(f"account {name}: description may hold letters, digits and .,:()/+- only")
        kind = r.get("kind", str)
        if kind not in ACCOUNT_KINDS:
            r.fail(f"account {name}: kind must be one of {', '.join(ACCOUNT_KINDS)}, not {kind!r}")
        members, coordinators = r.names("users"), r.names("coordinators")
        for u in members:
            if u not in user_names:
                r.fail(f"account {name}: user {u} is not in 'users'")
        for u in coordinators:
            if u not in members:
                r.fail(f"account {name}: coordinator {u} is not one of its users")
        accounts.append(AccountSpec(name, description, kind, r.number("gpu_hours", 0, 10_000_000),
                                    coordinators, members))
    _unique(path, "account", [a.name for a in accounts])
    members_of = {a.name: a.users for a in accounts}
    for u in users:
        if u.default_account not in members_of:
            raise DemoFileError(f"{path}: user {u.name}: default_account {u.default_account} "
                                "is not in 'accounts'.")
        if u.name not in members_of[u.default_account]:
            raise DemoFileError(f"{path}: user {u.name} is not a user of their default_account "
                                f"{u.default_account}.")

    reservations = []
    for i, raw in enumerate(top.entries("reservations", required=False)):
        r = _Reader(raw, f"reservations[{i}]", path)
        r.only("name", "account", "nodes", "days", "starts_in_days")
        name = r.name("name")
        account = r.name("account")
        if account not in members_of:
            r.fail(f"reservation {name}: account {account} is not in 'accounts'")
        members = r.names("nodes")
        if not members or any(n not in node_names for n in members):
            r.fail(f"reservation {name}: its nodes must be listed in 'nodes'")
        reservations.append(ReservationSpec(name, account, members, r.number("days", 1, 3650),
                                            r.number("starts_in_days", 0, 3650, 0)))
    _unique(path, "reservation", [r.name for r in reservations])

    groups = {}
    for name, members in (top.get("groups", dict, {}) or {}).items():
        g = _Reader({"members": members}, f"group {name}", path)
        if not isinstance(name, str) or not NAME_RE.match(name) or name in RESERVED_USERS:
            g.fail(f"group {name!r} is not a valid name")
        groups[name] = g.names("members")
        if any(m not in user_names for m in groups[name]):
            g.fail(f"group {name}: its members must be listed in 'users'")
    material = {}
    for course, folder in (top.get("material", dict, {}) or {}).items():
        if not (isinstance(course, str) and NAME_RE.match(course) and isinstance(folder, str)
                and re.match(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$", folder)):
            top.fail(f"material: {course!r} must name a course and a folder of the checkout")
        material[course] = folder

    period = top.get("budget_period", str)
    if period not in BUDGET_PERIODS:
        top.fail(f"budget_period must be one of {', '.join(BUDGET_PERIODS)}, not {period!r}")
    cluster = top.name("cluster")
    return Demo(cluster=cluster, bridge=bridge, subnet=subnet, nodes=tuple(nodes),
                partitions=tuple(partitions), budget_period=period, accounts=tuple(accounts),
                users=tuple(users), login_group=top.name("login_group"),
                reservations=tuple(reservations), groups=groups, material=material)


def _unique(path: Path, what: str, names: list[str]) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise DemoFileError(f"{path}: {what} {n} is listed twice.")
        seen.add(n)
