"""The spawn form: profiles, what is free now, and what a choice costs.

The page computes the cost as you change fields, but it decides nothing: the hub checks the
submitted values again (`request.resolve`, `request.check_budget`).
"""

from __future__ import annotations

import json

from jinja2 import Environment, PackageLoader

from ..billing import WeightsError, parse_weights, tres_order
from ..site_description import Site
from ..availability import GpuAvailability
from .. import slurm

_ENV = Environment(loader=PackageLoader("aifactory.spawner", "templates"), autoescape=True)

# The page itself: templates/spawn_form.html (HTML, its style and the cost script).
TEMPLATE = _ENV.get_template("spawn_form.html")


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
    profile, its window (course_rules.window), shown on the profile; `weights`: each partition's
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
