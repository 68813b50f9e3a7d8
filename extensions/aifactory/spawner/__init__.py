"""The hub's spawner (`slurm_spawner.SlurmSpawner`, configured as
`aifactory.spawner.SlurmSpawner`) and its parts: `request` (every check of what is asked),
`status` (a session's state from its job, pure), `form` (the spawn form), `callback` (the safe
port callback)."""

from .slurm_spawner import SlurmSpawner, StartError

__all__ = ["SlurmSpawner", "StartError"]
