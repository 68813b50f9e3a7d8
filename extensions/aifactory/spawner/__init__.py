"""The hub's spawner (`slurm_spawner.SlurmSpawner`, configured as
`aifactory.spawner.SlurmSpawner`) and its parts: `request` (every check of what is asked),
`status` (a session's state from its job, pure), `form` (the spawn form), `callback` (the safe
port callback)."""

__all__ = ["SlurmSpawner", "StartError"]


def __getattr__(name: str):
    # Loaded on first use, so that the pure parts (status) import without the hub.
    if name in __all__:
        from . import slurm_spawner
        return getattr(slurm_spawner, name)
    raise AttributeError(name)
