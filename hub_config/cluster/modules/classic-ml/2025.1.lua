-- The demo's module tree (copied to /opt/aifactory/modules by `aifactory cluster up`).
-- A second environment with another library set, built from environments/classic-ml.txt.
whatis("Name: classic-ml")
whatis("Version: 2025.1")
whatis("Description: scikit-learn 1.6, pandas 2.2 and NumPy 2.2, without PyTorch")
help([[Python with scikit-learn, pandas and NumPy (/opt/aifactory/envs/classic-ml).
Its Python has ipykernel, so loading this module gives a kernel in JupyterLab.]])
family("python_environment")
prepend_path("PATH", "/opt/aifactory/envs/classic-ml/bin")
setenv("VIRTUAL_ENV", "/opt/aifactory/envs/classic-ml")
