"""The local cluster's description (`hub_config/cluster/demo.yaml`): load and validate.

Every value here ends up in a Slurm config file, a sacctmgr call or a Unix user, so each is
checked against a strict pattern (aifactory.names) before anything is changed. A broken file
gives one `DemoFileError` sentence that names the file, the line and the entry.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import checked_yaml, names
from ..billing import WeightsError, parse_weights

BUDGET_PERIODS = {"monthly": "MONTHLY", "quarterly": "QUARTERLY", "yearly": "YEARLY"}
ACCOUNT_KINDS = ("research", "course")
# Names Slurm or Debian already use; a demo user must not take them over.
RESERVED_USERS = {"root", "slurm", "munge", "mysql", "daemon", "nobody", "admin"}


class DemoFileError(checked_yaml.CheckedYamlError):
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
    # People the demo's OpenID provider knows who have no account at this site.
    people_without_account: tuple[str, ...] = ()

    @property
    def controller_address(self) -> str:
        return str(next(self.subnet.hosts()))

    @property
    def gpu_nodes(self) -> tuple[NodeSpec, ...]:
        return tuple(n for n in self.nodes if n.gpus)

    @property
    def slurm_budget_period(self) -> str:
        return BUDGET_PERIODS[self.budget_period]


# The file's schema (aifactory.checked_yaml); the rules between entries are in `load`.
NAME_WORDS = "(lower-case letters, digits, '-' and '_', starting with a letter)"
USER = (str, names.USER_RE, f"a valid user name {NAME_WORDS}")
ACCOUNT = (str, names.ACCOUNT_RE, f"a valid account name {NAME_WORDS}")
NODE = (str, names.NODE_RE, f"a valid node name {NAME_WORDS}")
GROUP = (str, names.GROUP_RE, f"a valid group name {NAME_WORDS}")
SCHEMA = {
    "cluster": (str, names.CLUSTER_RE, f"a valid cluster name {NAME_WORDS}"),
    "network": {"bridge": (str, names.BRIDGE_RE, "an interface name like aif0"), "subnet": str},
    "nodes": [{"name": NODE, "address": str, "cpus": (int, 1, 1024),
               "memory_mb": (int, 512, 16_000_000), "gpus?": (int, 0, 16),
               "gpu_type?": (str, names.GPU_TYPE_RE, "a GPU type like h100")}, ...],
    "partitions": [{"name": (str, names.PARTITION_RE, f"a valid partition name {NAME_WORDS}"),
                    "nodes": [NODE, ...], "default?": bool,
                    "max_time?": (str, names.SLURM_TIME_RE, "a Slurm time like 2-00:00:00"),
                    "billing_weights?": str}, ...],
    "budget_period": set(BUDGET_PERIODS),
    "accounts": [{"name": ACCOUNT,
                  "description?": (str, re.compile(r"^[\w .,:()/+-]{1,80}\Z"),
                                   "a description of up to 80 letters, digits and .,:()/+-"),
                  "kind": set(ACCOUNT_KINDS), "gpu_hours": (int, 0, 10_000_000),
                  "coordinators?": [USER], "users?": [USER]}, ...],
    "users": [{"name": USER, "default_account": ACCOUNT}, ...],
    "login_group": GROUP,
    "reservations?": [{"name": (str, names.RESERVATION_RE,
                                f"a valid reservation name {NAME_WORDS}"),
                       "account": ACCOUNT, "nodes": [NODE, ...], "days": (int, 1, 3650),
                       "starts_in_days?": (int, 0, 3650)}],
    "groups?": ("mapping", GROUP, [USER]),
    "people_without_account?": [USER],
    "material?": ("mapping", (str, names.COURSE_RE, "a course name"),
                  (str, re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*\Z"),
                   "a folder of the checkout, like notebooks")),
}


def load(path: str | Path) -> Demo:
    """The demo file, checked: its schema, then the rules between its entries."""
    doc = checked_yaml.load(path, SCHEMA, DemoFileError)
    data = doc.data
    subnet = _subnet(doc, data["network"]["subnet"])
    nodes = _nodes(doc, data["nodes"], subnet)
    node_names = {n.name for n in nodes}

    partitions = []
    for i, raw in enumerate(data["partitions"]):
        name, key = raw["name"], f"partitions[{i}]"
        _once(doc, f"{key}.nodes", raw["nodes"], f"{key}.nodes:")
        for j, node in enumerate(raw["nodes"]):
            if node not in node_names:
                doc.fail(f"{key}.nodes[{j}]", f"partition {name}: node {node} is not in 'nodes'")
        weights = raw.get("billing_weights", "")
        try:
            parse_weights(weights)
        except WeightsError as e:
            doc.fail(f"{key}.billing_weights", f"partition {name}: billing_weights: {e}")
        partitions.append(PartitionSpec(name, tuple(raw["nodes"]), raw.get("default", False),
                                        raw.get("max_time", "1-00:00:00"), weights))
    _once(doc, "partitions", [p.name for p in partitions], "partition")
    if sum(p.default for p in partitions) != 1:
        doc.fail("partitions", "exactly one partition must have 'default: true'")

    users = [UserSpec(u["name"], u["default_account"]) for u in data["users"]]
    for i, u in enumerate(users):
        if u.name in RESERVED_USERS:
            doc.fail(f"users[{i}].name", f"user {u.name}: that name belongs to the system")
    _once(doc, "users", [u.name for u in users], "user")
    user_names = {u.name for u in users}

    accounts = [_account(doc, i, raw, user_names) for i, raw in enumerate(data["accounts"])]
    _once(doc, "accounts", [a.name for a in accounts], "account")
    members_of = {a.name: a.users for a in accounts}
    for i, u in enumerate(users):
        if u.default_account not in members_of:
            doc.fail(f"users[{i}].default_account", f"user {u.name}: default_account "
                                                     f"{u.default_account} is not in 'accounts'")
        if u.name not in members_of[u.default_account]:
            doc.fail(f"users[{i}].default_account", f"user {u.name} is not a user of their "
                                                     f"default_account {u.default_account}")

    reservations = []
    for i, raw in enumerate(data.get("reservations", [])):
        name, key = raw["name"], f"reservations[{i}]"
        if raw["account"] not in members_of:
            doc.fail(f"{key}.account",
                     f"reservation {name}: account {raw['account']} is not in 'accounts'")
        _once(doc, f"{key}.nodes", raw["nodes"], f"{key}.nodes:")
        if any(n not in node_names for n in raw["nodes"]):
            doc.fail(f"{key}.nodes", f"reservation {name}: its nodes must be listed in 'nodes'")
        reservations.append(ReservationSpec(name, raw["account"], tuple(raw["nodes"]),
                                            raw["days"], raw.get("starts_in_days", 0)))
    _once(doc, "reservations", [r.name for r in reservations], "reservation")

    groups = {}
    for name, members in data.get("groups", {}).items():
        if name in RESERVED_USERS:
            doc.fail(f"groups.{name}", f"group {name}: that name belongs to the system")
        _once(doc, f"groups.{name}", members, f"groups.{name}:")
        if any(m not in user_names for m in members):
            doc.fail(f"groups.{name}", f"group {name}: its members must be listed in 'users'")
        groups[name] = tuple(members)

    strangers = list(data.get("people_without_account", []))
    _once(doc, "people_without_account", strangers, "people_without_account:")
    if any(name in user_names for name in strangers):
        doc.fail("people_without_account", "people_without_account: a person listed there "
                 "has an account ('users')")

    return Demo(cluster=data["cluster"], bridge=data["network"]["bridge"], subnet=subnet,
                nodes=tuple(nodes), partitions=tuple(partitions),
                budget_period=data["budget_period"], accounts=tuple(accounts),
                users=tuple(users), login_group=data["login_group"],
                reservations=tuple(reservations), groups=groups,
                material=dict(data.get("material", {})),
                people_without_account=tuple(strangers))


def _subnet(doc, text: str) -> ipaddress.IPv4Network:
    try:
        subnet = ipaddress.IPv4Network(text)
    except ValueError:
        doc.fail("network.subnet",
                 f"network: subnet {text!r} is not an IPv4 network like 10.77.0.0/24")
    if not subnet.is_private or subnet.prefixlen > 28:
        doc.fail("network.subnet",
                 f"network: subnet {subnet} must be a private network of at least 16 addresses")
    return subnet


def _nodes(doc, raw_nodes: list, subnet: ipaddress.IPv4Network) -> list[NodeSpec]:
    nodes, addresses = [], {str(next(subnet.hosts()))}  # the controller's
    for i, raw in enumerate(raw_nodes):
        name, address, key = raw["name"], raw["address"], f"nodes[{i}]"
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            doc.fail(f"{key}.address", f"node {name}: address {address!r} is not an IPv4 address")
        if ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address):
            doc.fail(f"{key}.address",
                     f"node {name}: address {address} is not a host address in {subnet}")
        if address in addresses:
            doc.fail(f"{key}.address", f"node {name}: address {address} is already taken")
        addresses.add(address)
        gpus = raw.get("gpus", 0)
        if gpus and "gpu_type" not in raw:
            doc.fail(key, f"node {name}: a GPU node needs a gpu_type like 'h100'")
        nodes.append(NodeSpec(name, address, raw["cpus"], raw["memory_mb"], gpus,
                              raw.get("gpu_type", "") if gpus else ""))
    _once(doc, "nodes", [n.name for n in nodes], "node")
    return nodes


def _account(doc, i: int, raw: dict, user_names: set[str]) -> AccountSpec:
    name, key = raw["name"], f"accounts[{i}]"
    members, coordinators = raw.get("users", []), raw.get("coordinators", [])
    _once(doc, f"{key}.users", members, f"{key}.users:")
    _once(doc, f"{key}.coordinators", coordinators, f"{key}.coordinators:")
    for j, u in enumerate(members):
        if u not in user_names:
            doc.fail(f"{key}.users[{j}]", f"account {name}: user {u} is not in 'users'")
    for j, u in enumerate(coordinators):
        if u not in members:
            doc.fail(f"{key}.coordinators[{j}]",
                     f"account {name}: coordinator {u} is not one of its users")
    return AccountSpec(name, raw.get("description", name), raw["kind"], raw["gpu_hours"],
                       tuple(coordinators), tuple(members))


def _once(doc, key: str, names_given: list[str], what: str) -> None:
    """Each name once; `what` says what is listed twice ("node", "accounts[0].users:")."""
    for i, name in enumerate(names_given):
        if name in names_given[:i]:
            doc.fail(f"{key}[{i}]", f"{what} {name} is listed twice")
