"""The `aifactory` command."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from pathlib import Path


def _cluster_up(args) -> int:
    from . import cluster
    report = cluster.up(demo_file=args.demo, hub_config=args.hub_config)
    print(f"\nThe AI factory is up ({report.seconds:.0f} s). Log in at {cluster.HUB_URL}/")
    print("Demo users (demo only; passwords kept in /var/lib/aifactory/demo-passwords.json):")
    for user, password in report.passwords.items():
        print(f"  {user:10} {password}")
    return 0


def _cluster_down(args) -> int:
    from . import cluster
    stopped = cluster.down()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def _cluster_status(args) -> int:
    from . import cluster
    result = cluster.status()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0 if result["ok"] else 1
    for name, s in result["services"].items():
        mark = "ok  " if s["running"] else "DOWN"
        pid = f"pid {s['pid']}" if s["pid"] else ""
        print(f"{mark} {name:16} {pid:10} {s['what']}")
    for check, ok in result["checks"].items():
        print(f"{'ok  ' if ok else 'FAIL'} {check}")
    for node, state in result["nodes"].items():
        print(f"     node {node}: {state}")
    print("all green" if result["ok"] else "not all green")
    return 0 if result["ok"] else 1


def _allocation(args) -> int:
    """budget, jobs, gpus: the same answers as the widgets, from the service or from Slurm."""
    from . import report
    from .client import AllocationsError, default_client
    client = default_client()
    try:
        if args.command == "budget":
            answer, text = client.budgets(args.project), report.budgets_text
        elif args.command == "jobs":
            answer, text = client.jobs(args.user), report.jobs_text
        else:
            answer, text = client.gpus(), report.gpus_text
    except AllocationsError as e:
        print(f"aifactory: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print("\n".join([text(answer), *report.footer(answer)]))
    return 0


def _course(args) -> int:
    """course [NAME] [--start USER|all] [--stop USER|all]: an instructor's view and actions."""
    from . import report
    from .client import AllocationsError, course_targets, default_client
    client = default_client()
    try:
        if not args.name:
            answer = client.courses()
            print(json.dumps(answer, indent=2) if args.json else report.courses_text(answer))
            return 0
        answer = client.course(args.name)
        for action, who in (("start", args.start), ("stop", args.stop)):
            if who:
                users = course_targets(answer, action) if who == "all" else [who]
                for user in users:
                    try:
                        done = client.course_session(args.name, user, action)
                    except AllocationsError as e:
                        done = f"not done: {e}"
                    print(f"{user}: {done}")
                return 0
    except AllocationsError as e:
        print(f"aifactory: {e}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if args.json
          else "\n".join([report.course_text(answer), *report.footer(answer)]))
    return 0


def _environments(args) -> int:
    """Your venv and conda environments: which are kernels, and how to fix the others."""
    from . import kernels
    rows = kernels.describe_environments()
    print(json.dumps(rows, indent=2) if args.json else kernels.environments_text(rows))
    return 0


def _readable_by_all(path: Path) -> bool:
    """Others may run it: every folder on the way (the venv's, and where its links lead)
    searchable by them, and the program itself readable and executable."""
    try:
        target = path.resolve(strict=True)
        folders = {*path.absolute().parents, *target.parents}
        mode = target.stat().st_mode
        return (all(f.stat().st_mode & stat.S_IXOTH for f in folders)
                and bool(mode & stat.S_IROTH) and bool(mode & stat.S_IXOTH))
    except OSError:
        return False


def _sudo_rules(user: str) -> str:
    """What sudo lets `user` run (`sudo -l -U`, as root), "" where it cannot say."""
    import subprocess
    try:
        return subprocess.run(["sudo", "-n", "-l", "-U", user], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _site_check(args) -> int:
    from . import site_check, slurm
    from . import site_description as site_module
    path = args.site or Path(os.environ.get("AIFACTORY_SITE",
                                            "/etc/aifactory/hub_config/site.yaml"))
    try:
        site = site_module.load(path)
    except (OSError, site_module.SiteError) as e:
        print(f"aifactory: {e}", file=sys.stderr)
        return 2
    python = Path(site.dask["python"])
    facts = site_check.SlurmFacts(
        config=slurm.config(), partitions=slurm.partitions(), nodes=slurm.nodes(),
        reservations=slurm.reservations(), hub_user=args.hub_user,
        hub_admin_level=slurm.admin_level(args.hub_user), environment=str(python),
        environment_readable=_readable_by_all(python), service_user=args.service_user,
        service_admin_level=slurm.admin_level(args.service_user) if args.service_user else "",
        service_sudo=_sudo_rules(args.service_user) if args.service_user else "",
        hub_sudo=_sudo_rules(args.hub_user) if args.hub_user != "root" else "")
    findings = site_check.check(site, facts)
    major, minor = slurm.version()
    print(f"{path}, against Slurm {major}.{minor:02d}:")
    print(site_check.report(findings))
    return 0 if all(f.ok for f in findings) else 1


def _site_init(args) -> int:
    from . import site_description as site_module
    from . import site_init, slurm
    if args.out.exists():
        print(f"aifactory: {args.out} exists; site init writes only a new file.", file=sys.stderr)
        return 2
    try:
        text = site_init.describe(slurm.partitions(), slurm.nodes(), python=args.python,
                                  cluster=slurm.config().get("ClusterName", ""))
    except ValueError as e:
        print(f"aifactory: {e}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "x") as f:
        f.write(text)
    site = site_module.load(args.out)  # as the hub reads it at its start
    print(f"wrote {args.out}: {len(site.partitions)} partitions, {len(site.profiles)} profiles, "
          f"budgets in {site.billing.unit}. Next: aifactory site check --site {args.out}")
    return 0


def _site_install(args) -> int:
    from . import site_install
    try:
        changed = site_install.install(args.venv, cli_link=args.cli_link)
    except (OSError, site_install.InstallError) as e:
        print(f"aifactory: {e}", file=sys.stderr)
        return 2
    for line in changed:
        print(f"  {line}")
    print(f"{args.venv}: the sessions' settings are in place"
          + (f" ({len(changed)} changed)." if changed else " (nothing to change)."))
    return 0


def _read_table(path: Path) -> list:
    """Runs from a CSV file (a header of parameter names, a row per run) or a JSON list."""
    import csv
    from .spawner.request import RequestError
    try:
        text = path.read_text()
    except OSError as e:
        raise RequestError(f"The table {path} cannot be read ({e.strerror}).") from None
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except ValueError as e:
            raise RequestError(f"The table {path} is not JSON ({e}).") from None
    return [dict(row) for row in csv.DictReader(text.splitlines())]


def _notebook(args) -> int:
    """notebook run|list|stop: notebooks as Slurm batch jobs and arrays."""
    from . import report
    from .notebook_jobs import jobs
    from .site_description import ENVIRONMENT_OPTION
    from .spawner.request import RequestError
    try:
        if args.action == "list":
            answer = jobs.list_jobs()
            print(json.dumps(answer, indent=2) if args.json else report.notebook_jobs_text(answer))
            return 0
        if args.action == "stop":
            answer = jobs.stop(args.job)
            print(json.dumps(answer) if args.json else
                  f"notebook job {answer['id']} (Slurm job {answer['slurm_job_id']}) stopped")
            return 0
        fields = {k: v for k, v in (("profile", args.profile), ("gpus", args.gpus),
                                    ("cpus", args.cpus), ("memory_gb", args.memory_gb),
                                    ("walltime", args.time), ("account", args.account),
                                    (f"option_{ENVIRONMENT_OPTION}", args.environment))
                  if v is not None}
        parameters = {}
        for item in args.parameter or []:
            name, sep, value = item.partition("=")
            if not sep:
                raise RequestError(f"-p {item}: write NAME=VALUE.")
            parameters[name] = value
        rows = _read_table(args.table) if args.table else None
        prepared = jobs.prepare(args.notebook, fields, parameters=parameters, rows=rows,
                                parallel=args.at_once)
        if args.preview:
            answer = jobs.preview(prepared)
            left = (answer["budget_note"] or f"project {prepared.request.account}: "
                    f"{prepared.billing.amount(answer['remaining'])} left")
            print(json.dumps(answer, indent=2) if args.json else
                  f"{answer['cost_text']} ({left})\n{answer['start_text']}\n\n{answer['script']}")
            return 0
        answer = jobs.submit(prepared)
        print(json.dumps(answer, indent=2) if args.json else
              f"notebook job {answer['id']}: Slurm job {answer['slurm_job_id']}, "
              f"{len(answer['rows'])} run(s); output in {answer['folder']}")
        return 0
    except RequestError as e:
        print(f"aifactory: {e}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aifactory", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cluster_p = sub.add_parser("cluster", help="the local Slurm cluster and hub (root)")
    csub = cluster_p.add_subparsers(dest="action", required=True)
    up_p = csub.add_parser("up", help="install, configure and start everything (idempotent)")
    up_p.add_argument("--demo", type=Path, help="demo description (default: "
                      "hub_config/cluster/demo.yaml)")
    up_p.add_argument("--hub-config", type=Path, help="hub_config directory")
    up_p.set_defaults(func=_cluster_up)
    csub.add_parser("down", help="stop what `up` started; keep the data").set_defaults(
        func=_cluster_down)
    st = csub.add_parser("status", help="what runs and what does not")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_cluster_status)

    budget_p = sub.add_parser("budget", help="GPU-hours of your projects: granted, used, held, left")
    budget_p.add_argument("project", nargs="?", help="only this project")
    jobs_p = sub.add_parser("jobs", help="your pending, running and recent jobs")
    jobs_p.add_argument("--user", help="someone else's jobs (admins only)")
    gpus_p = sub.add_parser("gpus", help="free and total GPUs per partition; nodes down")
    for p in (budget_p, jobs_p, gpus_p):
        p.add_argument("--json", action="store_true", help="the answer as JSON")
        p.set_defaults(func=_allocation)
    course_p = sub.add_parser("course", help="your courses; a course you teach: participants' "
                                              "sessions, start or stop them")
    course_p.add_argument("name", nargs="?", help="the course (see `aifactory course`)")
    course_p.add_argument("--start", metavar="USER", help="start USER's session, or 'all'")
    course_p.add_argument("--stop", metavar="USER", help="stop USER's session, or 'all'")
    course_p.add_argument("--json", action="store_true", help="the answer as JSON")
    course_p.set_defaults(func=_course)
    env_p = sub.add_parser("environments", help="your venv and conda environments: which "
                                                "are Jupyter kernels, and how to fix the others")
    env_p.add_argument("--json", action="store_true", help="the answer as JSON")
    env_p.set_defaults(func=_environments)
    nb_p = sub.add_parser("notebook", help="run a notebook as a Slurm batch job or an array "
                                           "(papermill), list and stop them")
    nbsub = nb_p.add_subparsers(dest="action", required=True)
    run_p = nbsub.add_parser("run", help="check, then submit (or --preview: cost, Slurm's start "
                                         "estimate and the script; nothing is submitted)")
    run_p.add_argument("notebook", help="the .ipynb (relative paths: from your home)")
    run_p.add_argument("-p", "--parameter", action="append", metavar="NAME=VALUE",
                       help="a value for a name of the notebook's parameters cell")
    run_p.add_argument("--table", type=Path, help="a run per row (CSV with a header of "
                       "parameter names, or a JSON list): one Slurm array")
    run_p.add_argument("--at-once", help="at most this many runs of the table at once")
    run_p.add_argument("--profile", help="a spawn profile (default: the site's default)")
    run_p.add_argument("--gpus")
    run_p.add_argument("--cpus")
    run_p.add_argument("--memory-gb")
    run_p.add_argument("--time", help="the time limit, e.g. 01:00:00")
    run_p.add_argument("--account", help="the project to charge")
    run_p.add_argument("--environment", help="a site software environment of the profile")
    run_p.add_argument("--preview", action="store_true")
    list_p = nbsub.add_parser("list", help="your notebook jobs and each run's state")
    stop_p = nbsub.add_parser("stop", help="cancel a notebook job, pending or running")
    stop_p.add_argument("job", help="its id (the folder's name) or Slurm job id")
    for p in (run_p, list_p, stop_p):
        p.add_argument("--json", action="store_true", help="the answer as JSON")
        p.set_defaults(func=_notebook)
    site_p = sub.add_parser("site", help="a site's own Slurm: what aifactory needs of it")
    ssub = site_p.add_subparsers(dest="action", required=True)
    check_p = ssub.add_parser("check", help="say what aifactory needs and does not find, with "
                                            "the line to write; exit 0 only when all holds")
    check_p.add_argument("--site", type=Path, help="the site description (default: "
                         "$AIFACTORY_SITE, else /etc/aifactory/hub_config/site.yaml)")
    check_p.add_argument("--hub-user", default="root", help="the account the hub runs as "
                         "(the demo's: aifactory-hub; default: root)")
    check_p.add_argument("--service-user", default="", help="the allocations service's own "
                         "account, if it has one (the demo's: aifactory-allocations)")
    check_p.set_defaults(func=_site_check)
    init_p = ssub.add_parser("init", help="write a first site.yaml from what Slurm says "
                                          "(partitions, GPU types, billing, a profile each)")
    init_p.add_argument("--out", type=Path, required=True, help="the file to write (never "
                        "overwritten)")
    init_p.add_argument("--python", default=sys.executable, help="the shared environment's "
                        "Python, readable on every node (default: this one)")
    init_p.set_defaults(func=_site_init)
    install_p = ssub.add_parser("install", help="after pip install: the shared environment's "
                                "Jupyter, Dask, JupyterLab and desktop settings that make a "
                                "session an aifactory session (root; safe to run again)")
    install_p.add_argument("--venv", type=Path, default=Path(sys.prefix), help="the shared "
                           "environment (default: the one this command runs from)")
    install_p.add_argument("--cli-link", type=Path, help="also link the aifactory command "
                           "there, e.g. /usr/local/bin/aifactory")
    install_p.set_defaults(func=_site_install)
    args = parser.parse_args(argv)

    from .cluster.demo import DemoFileError
    from .cluster.system import ClusterError
    from .slurm import SlurmError
    try:
        return args.func(args)
    except (ClusterError, DemoFileError, SlurmError) as e:
        print(f"aifactory: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
