-- The demo's module tree (copied to /opt/aifactory/modules by `aifactory cluster up`).
-- The shared environment every session's server runs from: PyTorch, Dask, aifactory.
whatis("Name: aifactory")
whatis("Version: 0.1")
whatis("Description: PyTorch, Dask and the aifactory widgets (the shared environment)")
help([[The shared environment /opt/aifactory/venv: PyTorch, Dask, dask-jobqueue, aifactory.]])
family("python_environment")
prepend_path("PATH", "/opt/aifactory/venv/bin")
setenv("VIRTUAL_ENV", "/opt/aifactory/venv")
