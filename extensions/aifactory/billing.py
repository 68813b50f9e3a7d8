"""How the site charges: GPU-hours on `gres/gpu`, or a billing unit on Slurm's `billing` TRES.

Pure rules, no I/O. With a billing unit, Slurm makes a job's billing the weighted sum of what
it was given (the partition's TRESBillingWeights), cut to a whole number, and counts that for
every minute the job runs against the project's GrpTRESMins=billing=N. One unit here is one
billing-hour; the site names it ("SBU", "AIU") and says what one GPU-hour costs, so amounts
can be shown in GPU-hours beside. Without weights Slurm bills the job's CPUs. Weights of
PriorityFlags=MAX_TRES (the largest node TRES instead of the sum) are not modelled.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# One TRESBillingWeights entry: a TRES Slurm knows (type, or type/name) = a number, with a
# size suffix. Nothing else, so a weight can be written into slurm.conf as it is.
WEIGHT_RE = re.compile(r"^((?:cpu|mem|node|energy|billing|vmem|pages)"
                       r"|(?:gres|license|bb|fs|ic)/[A-Za-z0-9_.:-]+)"
                       r"=([0-9]{1,9}(?:\.[0-9]{1,9})?|\.[0-9]{1,9})([KMGTP]?)\Z", re.IGNORECASE)
# A weight written with a suffix is per that many MB (memory's: "Mem=0.25G" is per GB).
SUFFIX_MB = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2, "P": 1024 ** 3}


class WeightsError(ValueError):
    """TRESBillingWeights that cannot be read."""


def parse_weights(text: str) -> dict[str, float]:
    """{"cpu": 1.0, "mem": weight per MB, "gres/gpu": 24.0, ...} from "CPU=1.0,Mem=0.25G,...".

    Names are lower-cased as Slurm compares them; "" (no weights) gives {}."""
    weights = {}
    for item in (text.split(",") if text else []):
        m = WEIGHT_RE.match(item)
        if not m:
            raise WeightsError(f"TRESBillingWeights entry {item[:40]!r} is not TRES=NUMBER "
                               "(CPU=1.0, Mem=0.25G, GRES/gpu=24)")
        name, value, suffix = m.group(1).lower(), float(m.group(2)), m.group(3).upper()
        weights[name] = value / SUFFIX_MB[suffix] if name == "mem" else value
    return weights


# Slurm's own TRES order (cpu, mem, energy, node, billing, then the rest as configured).
TRES_ORDER = ("cpu", "mem", "energy", "node", "billing")


def tres_order(weights: dict[str, float]) -> list[tuple[str, float]]:
    """The weights in the order slurmctld adds them up (so the float sum is the same)."""
    first = [(n, weights[n]) for n in TRES_ORDER if n in weights]
    return first + [(n, w) for n, w in weights.items() if n not in TRES_ORDER]


def job_billing(weights: dict[str, float], *, cpus: int, memory_mb: int, gpus: int,
                gpu_type: str = "", nodes: int = 1) -> int:
    """A job's billing TRES as Slurm computes it: the weighted sum, cut to a whole number
    (the form's script does the same sum)."""
    if not weights:
        return cpus
    given = {"cpu": cpus, "mem": memory_mb, "node": nodes, "gres/gpu": gpus}
    if gpu_type:
        given[f"gres/gpu:{gpu_type}"] = gpus
    total = 0.0
    for name, weight in tres_order(weights):
        total += weight * given.get(name, 0)
    return math.floor(total)


@dataclass(frozen=True)
class Billing:
    """The site's accounting: which TRES budgets limit, the unit's name, its GPU-hour price."""
    tres: str = "gres/gpu"  # "gres/gpu" (GPU-hours) or "billing" (the site's unit)
    unit: str = "GPU-hours"  # printed after every amount
    units_per_gpu_hour: float = 1.0  # one GPU-hour with its share of a node, in units

    @property
    def by_gpu(self) -> bool:
        return self.tres == "gres/gpu"

    def rate(self, weights: str, *, cpus: int, memory_mb: int, gpus: int, gpu_type: str = "",
             nodes: int = 1) -> int:
        """Units per hour that a job of this size costs in a partition with these weights."""
        if self.by_gpu:
            return gpus
        return job_billing(parse_weights(weights), cpus=cpus, memory_mb=memory_mb, gpus=gpus,
                           gpu_type=gpu_type, nodes=nodes)

    def gpu_hours(self, units: float | None) -> float | None:
        return None if units is None else units / self.units_per_gpu_hour

    def amount(self, units: float | None) -> str:
        """'12.50 GPU-hours', or '600.00 AIU (12.50 GPU-h)' with a billing unit."""
        if units is None:
            return "unlimited"
        text = f"{number(units)} {self.unit}"
        return text if self.by_gpu else f"{text} ({number(self.gpu_hours(units))} GPU-h)"

    def describe(self) -> str:
        """One line for the people who read the numbers."""
        if self.by_gpu:
            return "GPU-hours, as Slurm counts them"
        return (f"{self.unit}, as Slurm bills CPUs, memory and GPUs; "
                f"one GPU-hour with its share of a node is {number(self.units_per_gpu_hour)} "
                f"{self.unit}")


def number(x: float) -> str:
    """Amounts as every view prints them."""
    return f"{x:,.2f}"
