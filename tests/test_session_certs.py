"""The session's certificate travels in its job's environment (aifactory.spawner.certs): pure
rules, and the script's lines run by bash."""

import os
import stat
import subprocess

import pytest

from aifactory.spawner import certs

KEY = "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASC\nAT8wggE7AgEAAkEA\n-----END PRIVATE KEY-----\n"
CERT = "-----BEGIN CERTIFICATE-----\nMIIBszCCAV2gAwIBAgIUQ==\n-----END CERTIFICATE-----\n"
PEMS = {"keyfile": KEY, "certfile": CERT, "cafile": CERT + CERT}


def test_the_scripts_lines_write_each_pem_privately_and_point_the_server_at_it(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o700)
    script = "\n".join([*certs.unexport_lines(PEMS), "umask 077",
                        'env | grep -c "^AIFACTORY_SESSION_" || true',  # a program run before
                        *certs.job_lines(PEMS),
                        'env | grep -E "^(JUPYTERHUB_SSL_|AIFACTORY_SESSION_)" | sort']) + "\n"
    assert "BEGIN" not in script  # the script, which Slurm's operators can read, holds no PEM
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True,
                         env={"AIFACTORY_SCRATCH": str(scratch), "PATH": os.environ["PATH"],
                              **certs.environment(PEMS)})
    before, *after = out.stdout.split()
    assert before == "0"  # no program of the job inherits them, from its first line on
    env = dict(line.split("=", 1) for line in after)
    assert set(env) == set(certs.ENV.values())  # the carrying variables are gone
    for name, variable in certs.ENV.items():
        path = env[variable]
        assert path.startswith(str(scratch / "certs") + "/")
        assert open(path).read() == PEMS[name]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(scratch / "certs").st_mode) == 0o700


def test_the_carrying_variables_are_kept_by_the_hubs_sudo_rule():
    from aifactory import slurm
    assert all(slurm.session_env_kept(name) for name in certs.environment(PEMS))


def test_no_certificate_no_lines():
    assert certs.job_lines({}) == [] and certs.environment({}) == {}


@pytest.mark.parametrize("text", [
    "not a pem", KEY + "\nrm -rf ~\n", KEY.replace("MIIB", "MI'B"),
    "-----BEGIN CERTIFICATE-----\n$(id)\n-----END CERTIFICATE-----\n"])
def test_what_is_not_pem_never_reaches_the_job(text):
    with pytest.raises(ValueError, match="not PEM"):
        certs.environment({"keyfile": text})


def test_a_pem_the_hub_did_not_send_ends_the_job_with_a_sentence(tmp_path):
    script = "\n".join([*certs.unexport_lines(PEMS), *certs.job_lines(PEMS), "echo started"])
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                         env={"AIFACTORY_SCRATCH": str(tmp_path), "PATH": os.environ["PATH"],
                              "AIFACTORY_SESSION_KEY": KEY})
    assert out.returncode != 0 and "started" not in out.stdout
    assert "the hub sent no certfile" in out.stderr
