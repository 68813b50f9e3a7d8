"""A first site description written from what a site's Slurm says (pure).

`aifactory site init` gathers the partitions and nodes; this module makes of them the
partitions' sizes and limits, the billing (GPU-hours where partitions bill GPUs only, else
the site's unit from their TRESBillingWeights), a profile per GPU type and per CPU
partition, and GPUCluster's defaults. What it cannot know (courses, environments, the
unit's name) is left for the site to add.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from . import names, slurm
from .billing import job_billing, parse_weights
from .site_description import format_minutes

UNLIMITED_WALLTIME_MIN = 7 * 24 * 60  # what the form offers where Slurm sets no MaxTime
SESSION_MIN = 4 * 60


def walltime(minutes: float) -> str:
    return format_minutes(int(minutes))


@dataclass(frozen=True)
class Shape:
    """One partition as the site description sees it."""
    name: str
    gpu_types: tuple[str, ...]
    gpus_per_node: int
    cpus_per_node: int
    memory_gb_per_node: int
    max_walltime_min: int
    weights: str


def shapes(partitions: dict[str, slurm.Partition], nodes: list[slurm.Node]
           ) -> tuple[list[Shape], list[str]]:
    """The partitions with nodes (the largest node of each), and what was left out, why."""
    found, skipped = [], []
    for name, part in sorted(partitions.items()):
        members = [n for n in nodes if name in n.partitions]
        if not names.PARTITION_RE.match(name):
            skipped.append(f"partition {name}: not a name site.yaml takes")
            continue
        if not members:
            skipped.append(f"partition {name}: no nodes")
            continue
        types: dict[str, int] = {}
        for n in members:
            for gpu_type, count in n.gpus().items():
                if gpu_type and not names.GPU_TYPE_RE.match(gpu_type):
                    skipped.append(f"GPU type {gpu_type} on {n.name}: not a name site.yaml "
                                   "takes (lower-case)")
                    continue
                types[gpu_type] = max(types.get(gpu_type, 0), count)
        limit = part.max_time_min
        found.append(Shape(
            name=name, gpu_types=tuple(sorted(t for t in types if t)),
            gpus_per_node=max(types.values(), default=0),
            cpus_per_node=max(n.cpus for n in members),
            memory_gb_per_node=max(n.memory_mb for n in members) // 1024,
            max_walltime_min=int(limit) if limit not in (None, slurm.UNLIMITED)
            else UNLIMITED_WALLTIME_MIN,
            weights=part.billing_weights))
    return found, skipped


def _bills_gpus_only(weights: str) -> bool:
    return set(parse_weights(weights)) <= {"gres/gpu"}


def billing(found: list[Shape]) -> dict:
    if all(_bills_gpus_only(s.weights) for s in found):
        return {"tres": "gres/gpu"}
    gpu = next((s for s in found if s.gpus_per_node), None)
    per_gpu = 1.0
    if gpu is not None:
        per_gpu = float(job_billing(parse_weights(gpu.weights),
                                    cpus=gpu.cpus_per_node // gpu.gpus_per_node,
                                    memory_mb=gpu.memory_gb_per_node * 1024 // gpu.gpus_per_node,
                                    gpus=1, gpu_type=gpu.gpu_types[0] if gpu.gpu_types else ""))
    return {"tres": "billing", "unit": "BU", "units_per_gpu_hour": per_gpu or 1.0}


def _slug(*words: str) -> str:
    return "-".join(w.replace("_", "-") for w in words)[:40]


def profiles(found: list[Shape]) -> list[dict]:
    made = []
    types_seen = [t for s in found for t in s.gpu_types]
    for s in found:
        for gpu_type in s.gpu_types:
            alone = types_seen.count(gpu_type) == 1
            cpus = max(1, s.cpus_per_node // s.gpus_per_node)
            memory = max(1, s.memory_gb_per_node // s.gpus_per_node)
            made.append({
                "display_name": f"1× {gpu_type.upper()}" + ("" if alone else f" on {s.name}"),
                "slug": _slug(gpu_type, "1") if alone else _slug(s.name, gpu_type, "1"),
                "description": f"One {gpu_type} GPU with {cpus} CPUs and {memory} GB on "
                               f"partition {s.name}.",
                "idle_minutes": 60,
                "slurm": {"partition": s.name, "gpu_type": gpu_type, "gpus": 1, "cpus": cpus,
                          "memory_gb": memory,
                          "walltime": walltime(min(SESSION_MIN, s.max_walltime_min))},
                "limits": {"gpus": s.gpus_per_node, "cpus": s.cpus_per_node,
                           "memory_gb": s.memory_gb_per_node,
                           "walltime": walltime(s.max_walltime_min)},
            })
        if not s.gpu_types:
            cpus, memory = min(4, s.cpus_per_node), min(8, s.memory_gb_per_node)
            made.append({
                "display_name": f"CPU notebook on {s.name}",
                "slug": _slug(s.name) if "cpu" in s.name else _slug(s.name, "cpu"),
                "description": f"{cpus} CPUs and {memory} GB on partition {s.name}.",
                "idle_minutes": 120,
                "slurm": {"partition": s.name, "gpus": 0, "cpus": cpus, "memory_gb": memory,
                          "walltime": walltime(min(2 * 60, s.max_walltime_min))},
                "limits": {"cpus": s.cpus_per_node, "memory_gb": s.memory_gb_per_node,
                           "walltime": walltime(s.max_walltime_min)},
            })
    if made:
        made[0]["default"] = True
    return made


def describe(partitions: dict[str, slurm.Partition], nodes: list[slurm.Node], *,
             python: str, cluster: str = "") -> str:
    """site.yaml's text; raises ValueError when Slurm has no partition to describe."""
    found, skipped = shapes(partitions, nodes)
    if not found:
        raise ValueError("Slurm has no partition with nodes that site.yaml could describe"
                         + (f" ({'; '.join(skipped)})" if skipped else ""))
    gpu = next((s for s in found if s.gpu_types), found[0])
    doc = {
        "billing": billing(found),
        "partitions": {s.name: {"gpu_types": list(s.gpu_types),
                                "gpus_per_node": s.gpus_per_node,
                                "cpus_per_node": s.cpus_per_node,
                                "memory_gb_per_node": s.memory_gb_per_node,
                                "max_walltime": walltime(s.max_walltime_min)} for s in found},
        "profiles": profiles(found),
        "dask": {"partition": gpu.name, "gpu_type": gpu.gpu_types[0] if gpu.gpu_types else "",
                 "gpus_per_job": 1 if gpu.gpu_types else 0,
                 "cpus_per_gpu": max(1, gpu.cpus_per_node // max(1, gpu.gpus_per_node)),
                 "memory_gb_per_gpu": max(1, gpu.memory_gb_per_node // max(1, gpu.gpus_per_node)),
                 "walltime": "01:00:00", "interface": "eth0", "local_directory": "/tmp",
                 "python": python},
    }
    header = [f"# Written by `aifactory site init` from what Slurm{f' ({cluster})' if cluster else ''} "
              "says. Check it with `aifactory site check`.",
              "# Yours to add: courses, environments (and modules), coordinator_groups; the "
              "unit's name if it bills in units; dask.interface (the nodes' network).",
              *(f"# Left out: {why}" for why in skipped)]
    return "\n".join(header) + "\n" + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
