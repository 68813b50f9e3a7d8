"""The session's certificate, brought into its job (runs in the hub, as it submits the job).

With `internal_ssl` the hub makes a certificate and key for each session. batchspawner leaves
them on the hub's disk, where a server on a compute node cannot read them. The job's
environment carries them instead: sbatch hands it to slurmctld, which keeps it where only
root and SlurmUser read it (no Slurm command shows a job's environment; the job script,
which operators can read back with `scontrol write batch_script`, holds none of it). The
script stops exporting them at its first line, so no program of the session inherits them,
and writes them into the job's private folder ($AIFACTORY_SCRATCH: 0700, removed when the job
ends) with the shell's own printf before the server starts. Only the job's batch shell keeps
them in its /proc/PID/environ, which only its user and root can read.
"""

from __future__ import annotations

import re

# The variables the single-user server reads its certificate from (jupyterhub.singleuser).
ENV = {"keyfile": "JUPYTERHUB_SSL_KEYFILE", "certfile": "JUPYTERHUB_SSL_CERTFILE",
       "cafile": "JUPYTERHUB_SSL_CLIENT_CA"}
# ... and those that carry them into the job (AIFACTORY_*: the hub's sudo rule keeps them).
CARRIED = {"keyfile": "AIFACTORY_SESSION_KEY", "certfile": "AIFACTORY_SESSION_CERT",
           "cafile": "AIFACTORY_SESSION_CAS"}
FILES = {"keyfile": "session.key", "certfile": "session.crt", "cafile": "trusted-cas.crt"}
_PEM = re.compile(r"\A(-----BEGIN [A-Z0-9 ]+-----\n[A-Za-z0-9+/=\n]+-----END [A-Z0-9 ]+-----\n)+\Z")


def environment(pems: dict[str, str]) -> dict[str, str]:
    """The job's variables that carry each PEM (checked to be PEM, ending in a newline)."""
    carried = {}
    for name, text in pems.items():
        text = text if text.endswith("\n") else text + "\n"
        if not _PEM.match(text):  # made by the hub, never by a user: checked all the same
            raise ValueError(f"the session's {name} is not PEM")
        carried[CARRIED[name]] = text
    return carried


def unexport_lines(names) -> list[str]:
    """The script's first line: the carrying variables stay the shell's own."""
    names = list(names)
    return [f"export -n {' '.join(CARRIED[name] for name in names)}"] if names else []


def job_lines(names) -> list[str]:
    """Script lines (after the private folder exists, under umask 077) writing each carried
    PEM into $AIFACTORY_SCRATCH/certs, unsetting its variable and pointing the server's at
    the file; none without PEMs."""
    names = list(names)
    if not names:
        return []
    lines = ['mkdir -m 700 "$AIFACTORY_SCRATCH/certs" || exit 1']
    for name in names:
        path, carried = f'"$AIFACTORY_SCRATCH/certs/{FILES[name]}"', CARRIED[name]
        # printf is bash's own: the PEM is in no program's arguments.
        lines += [f'printf %s "${{{carried}:?the hub sent no {name}}}" > {path} || exit 1',
                  f"unset {carried}",
                  f"export {ENV[name]}={path}"]
    return lines
