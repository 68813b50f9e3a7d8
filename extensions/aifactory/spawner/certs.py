"""The session's certificate, brought into its job (runs in the hub, as it builds the script).

With `internal_ssl` the hub makes a certificate and key for each session. batchspawner leaves
them on the hub's disk, where a server on a compute node cannot read them. The job script
carries them instead: Slurm keeps a script where only root, SlurmUser, its operators (the
hub's and the service's accounts) and the job's own user can read it back (`scontrol write
batch_script`), and the script writes them into the job's
private folder ($AIFACTORY_SCRATCH: 0700, removed when the job ends) before the server starts.
"""

from __future__ import annotations

import re

# The variables the single-user server reads its certificate from (jupyterhub.singleuser).
ENV = {"keyfile": "JUPYTERHUB_SSL_KEYFILE", "certfile": "JUPYTERHUB_SSL_CERTFILE",
       "cafile": "JUPYTERHUB_SSL_CLIENT_CA"}
FILES = {"keyfile": "session.key", "certfile": "session.crt", "cafile": "trusted-cas.crt"}
END = "AIFACTORY_PEM_END"
_PEM = re.compile(r"\A(-----BEGIN [A-Z0-9 ]+-----\n[A-Za-z0-9+/=\n]+-----END [A-Z0-9 ]+-----\n)+\Z")


def job_lines(pems: dict[str, str]) -> list[str]:
    """Script lines (after the private folder exists, under umask 077) writing each PEM into
    $AIFACTORY_SCRATCH/certs and pointing the server's variables at them; none without PEMs."""
    if not pems:
        return []
    lines = ['mkdir -m 700 "$AIFACTORY_SCRATCH/certs" || exit 1']
    for name, text in pems.items():
        text = text if text.endswith("\n") else text + "\n"
        if not _PEM.match(text):  # made by the hub, never by a user: but a heredoc must close
            raise ValueError(f"the session's {name} is not PEM")
        path = f'"$AIFACTORY_SCRATCH/certs/{FILES[name]}"'
        lines += [f"cat > {path} <<'{END}'", *text.rstrip("\n").split("\n"), END,
                  f"export {ENV[name]}={path}"]
    return lines
