"""What a person may ask for on the spawn form: checked before anything reaches Slurm."""

import datetime as dt
import re
from pathlib import Path

import pytest

from aifactory import site_description as site_module
from aifactory import slurm
from aifactory.spawner.request import RequestError, check_budget, check_modules, resolve

SITE = site_module.load(Path(__file__).resolve().parents[1] / "hub_config" / "site.yaml")
JAN_10 = dt.datetime(2027, 1, 10, 9).timestamp()
RESERVATIONS = {
    "dl101": slurm.Reservation("dl101", None, None, "gpu03", accounts=("course-dl101",)),
    "later": slurm.Reservation("later", JAN_10, None, "gpu02", accounts=("proj-climate",)),
    "others": slurm.Reservation("others", None, None, "gpu01", accounts=("proj-other",)),
}


PARTICIPANT = ("dl101-participants",)


def ask(form, user="bob", accounts=("proj-climate", "proj-tiny"), default="proj-climate",
        groups=(), reservations=RESERVATIONS):
    return resolve(SITE, form, user=user, accounts=list(accounts), default_account=default,
                   reservations=reservations, qos={a: ["normal"] for a in accounts} | {
                       "proj-climate": ["normal", "long"]}, groups=groups)


def test_each_profile_resolves_to_its_slurm_request():
    cpu = ask({"profile": "cpu"})
    assert (cpu.partition, cpu.gpus, cpu.gpu_type, cpu.cpus, cpu.memory_gb, cpu.walltime) == (
        "cpu", 0, "", 4, 8, "02:00:00")
    one = ask({"profile": "h100-1"})
    assert (one.partition, one.gpu_type, one.gpus, one.walltime, one.account) == (
        "gpu", "h100", 1, "04:00:00", "proj-climate")
    assert ask({"profile": "h100-1", "option_walltime": "1h"}).walltime == "01:00:00"
    four = ask({"profile": "h100-4", "account": "proj-climate"})
    assert four.gpus == 4 and four.gpu_minutes == 4 * 8 * 60
    course = ask({"profile": "course-dl101"}, user="student1", accounts=["course-dl101"],
                 default="course-dl101", groups=PARTICIPANT)
    assert (course.account, course.reservation, course.gpus) == ("course-dl101", "dl101", 1)
    assert ask({}).profile == "cpu"  # the default profile


def test_form_lists_and_the_hubs_own_fields_are_understood():
    request = ask({"profile": ["h100-1"], "gpus": ["2"], "walltime": ["06:30:00"], "_xsrf": ["x"]})
    assert (request.gpus, request.walltime) == (2, "06:30:00")
    assert ask({"profile": "h100-1", "gpus": ""}).gpus == 1  # empty: the profile's value
    assert ask({"profile": "h100-1", "qos": "long"}).qos == "long"
    assert ask({"profile": "h100-1"}).qos == ""  # Slurm's default for the association


BAD = [
    ({"profile": "h100-1; rm -rf /"}, "use only letters"),
    ({"profile": "gpu-max"}, "There is no profile 'gpu-max'"),
    ({"profile": "h100-1", "walltime": "01:00:00\n#SBATCH --uid=0"}, "use only letters"),
    ({"profile": "h100-1", "walltime": "01:00:00 --uid=0"}, "use only letters"),
    ({"profile": "h100-1", "account": "proj-climate\n#SBATCH --account=root"}, "use only letters"),
    ({"profile": "h100-1", "account": "$(id)"}, "use only letters"),
    ({"profile": "h100-1", "account": "`reboot`"}, "use only letters"),
    ({"profile": "h100-1", "partition": "gpu&&id"}, "use only letters"),
    ({"profile": "h100-1", "gpus": "1|id"}, "use only letters"),
    ({"profile": "h100-1", "gpus": "-1"}, "GPUs must be a whole number"),
    ({"profile": "h100-1", "gpus": "1.5"}, "GPUs must be a whole number"),
    ({"profile": "h100-1", "gpus": "99999"}, "has 4 GPUs; you asked for 99999"),
    ({"profile": "h100-1", "gpus": "3"}, "allows at most 2 GPUs"),
    ({"profile": "h100-4", "gpus": "5"}, "has 4 GPUs; you asked for 5"),
    ({"profile": "h100-1", "cpus": "0"}, "CPUs must be between 1 and 16"),
    ({"profile": "h100-1", "cpus": "33"}, "CPUs must be between 1 and 16"),
    ({"profile": "h100-1", "memory_gb": "0"}, "Memory must be between 1 and 120 GB"),
    ({"profile": "h100-1", "memory_gb": "1000"}, "Memory must be between 1 and 120 GB"),
    ({"profile": "h100-1", "walltime": "9:00:00"}, "longer than the 08:00:00"),
    ({"profile": "h100-4", "walltime": "3-00:00:00"}, "longer than the 2-00:00:00"),
    ({"profile": "cpu", "walltime": "1-00:00:00"}, "longer than the 08:00:00"),
    ({"profile": "h100-1", "walltime": "forever"}, "not a duration"),
    ({"profile": "h100-1", "walltime": "00:61:00"}, "not a duration"),
    ({"profile": "h100-1", "walltime": "00:00:00"}, "not a duration"),
    ({"profile": "cpu", "gpus": "1"}, "The cpu partition has no GPUs"),
    ({"profile": "cpu", "gpu_type": "h100"}, "The cpu partition has no GPUs"),
    ({"profile": "h100-1", "gpu_type": "a100"}, "has no a100 GPUs"),
    ({"profile": "h100-1", "partition": "debug"}, "There is no partition 'debug'"),
    ({"profile": "h100-1", "account": "course-dl101"}, "You cannot charge account 'course-dl101'"),
    ({"profile": "h100-1", "account": "root"}, "You cannot charge account 'root'"),
    ({"profile": "h100-1", "qos": "high"}, "QOS 'high' is not allowed on account proj-climate"),
    ({"profile": "h100-1", "qos": "long", "account": "proj-tiny"}, "allowed: normal."),
    ({"profile": "h100-1", "reservation": "others"}, "Reservation 'others' is not one you may use"),
    ({"profile": "h100-1", "reservation": "nope"}, "Reservation 'nope' is not one you may use"),
    ({"profile": "h100-1", "reservation": "later"}, "opens at 2027-01-10 09:00;"),
    ({"profile": "h100-1", "option_walltime": "12h"}, "'12h' is not one of the choices"),
    ({"profile": "cpu", "option_walltime": "1h"}, "has no option 'walltime'"),
    ({"profile": "h100-1", "profile_list": "x"}, "Unknown field 'profile_list'"),
    ({"profile": "h100-1", "exec_prefix": "sudo"}, "Unknown field 'exec_prefix'"),
    ({"profile": "h100-1", "batch_script": "#!/bin/sh"}, "Unknown field 'batch_script'"),
    ({"profile": "h100-1", "x\ny": "1"}, "Unknown field '(unreadable)'"),
    ({"profile": ["h100-1", "h100-4"]}, "give exactly one value"),
    ({"profile": "h100-1", "gpus": {"a": 1}}, "must be text or a number"),
    ({"profile": "h100-1", "gpus": "1" * 70}, "at most 64"),
]


@pytest.mark.parametrize("form,message", BAD, ids=[m for _, m in BAD])
def test_bad_fields_are_refused_with_a_sentence(form, message):
    with pytest.raises(RequestError) as err:
        ask(form)
    assert message in str(err.value)
    assert err.value.jupyterhub_message == str(err.value)


def test_a_course_profile_keeps_its_account_and_reservation():
    student = dict(user="student1", accounts=["course-dl101", "proj-climate"],
                   default="proj-climate", groups=PARTICIPANT)
    for field, value in (("account", "proj-climate"), ("reservation", "others"),
                         ("partition", "cpu")):
        with pytest.raises(RequestError, match="profile sets the"):
            ask({"profile": "course-dl101", field: value}, **student)
    assert ask({"profile": "course-dl101", "account": "course-dl101"}, **student).account == "course-dl101"


def test_a_course_profile_is_for_its_participants_and_instructors_only():
    others = dict(user="bob", accounts=["course-dl101", "proj-climate"], default="proj-climate")
    with pytest.raises(RequestError, match="There is no profile 'course-dl101'"):
        ask({"profile": "course-dl101"}, **others)
    with pytest.raises(RequestError, match="There is no profile 'course-dl101'"):
        ask({"profile": "course-dl101"}, **others, groups=("ml202-participants",))
    assert ask({"profile": "course-dl101"}, **others,
               groups=("dl101-instructors",)).reservation == "dl101"


def test_the_course_budget_pays_for_gpus_only_in_the_course():
    student = dict(user="student1", accounts=["course-dl101"], default="course-dl101",
                   groups=PARTICIPANT)
    for form in ({"profile": "h100-1"}, {"profile": "h100-4", "account": "course-dl101"},
                 {"profile": "cpu", "account": "course-dl101", "gpus": "1", "partition": "gpu"}):
        with pytest.raises(RequestError, match="is the GPU budget of DL101"):
            ask(form, **student)
    assert ask({"profile": "cpu"}, **student).account == "course-dl101"  # no GPUs: no cost


def test_before_and_after_the_window_the_course_says_when():
    later = dict(RESERVATIONS, ml202=slurm.Reservation(
        "ml202", JAN_10, dt.datetime(2027, 1, 15, 9).timestamp(), "gpu02",
        accounts=("course-ml202",)))
    student = dict(user="student3", accounts=["course-ml202"], default="course-ml202",
                   groups=("ml202-participants",))
    with pytest.raises(RequestError, match=r"ML202: scaling out \(starts next month\) opens at "
                                           r"Sun 10 Jan 2027 09:00 \(in \d+ days\)"):
        ask({"profile": "course-ml202"}, **student, reservations=later)
    with pytest.raises(RequestError, match="has no reservation now"):
        ask({"profile": "course-ml202"}, **student)


def test_the_reservation_must_belong_to_the_account_charged():
    with pytest.raises(RequestError, match="is for account course-dl101, not proj-climate"):
        ask({"profile": "h100-1", "reservation": "dl101", "account": "proj-climate"},
            user="carol", accounts=["course-dl101", "proj-climate"], default="proj-climate")


def test_budget_check_gives_the_cost_and_what_is_left():
    request = ask({"profile": "h100-4", "account": "proj-tiny"})
    with pytest.raises(RequestError) as err:
        check_budget(request, {"proj-tiny": slurm.Budget("proj-tiny", 60, 20, 10)})
    assert str(err.value).startswith("4 GPUs × 8 h = 32 GPU-hours, but project proj-tiny has "
                                     "0.50 GPU-hours left.")
    with pytest.raises(RequestError, match="proj-tiny's budget is used up: 0.83 GPU-hours of "
                                           "1.00 GPU-hours used, 0.17 GPU-hours held"):
        check_budget(request, {"proj-tiny": slurm.Budget("proj-tiny", 60, 50, 10)})
    small = ask({"profile": "h100-1", "account": "proj-tiny", "option_walltime": "1h",
                 "walltime": "00:30:00"})
    check_budget(small, {"proj-tiny": slurm.Budget("proj-tiny", 60, 20, 10)})  # 30 <= 30
    check_budget(ask({"profile": "cpu", "account": "proj-tiny"}),
                 {"proj-tiny": slurm.Budget("proj-tiny", 60, 60, 0)})  # no GPUs: no cost
    check_budget(request, {})  # an account without a GPU limit


def test_broken_site_description_is_refused(tmp_path):
    text = (Path(__file__).resolve().parents[1] / "hub_config" / "site.yaml").read_text()
    bad = tmp_path / "site.yaml"
    bad.write_text(text.replace("slug: h100-4", "slug: 'H100 4'"))
    with pytest.raises(site_module.SiteError, match=r"site.yaml, line \d+, profiles\[2\]\.slug: "
                                                    r"'H100 4' is not a profile slug"):
        site_module.load(bad)
    bad.write_text(text.replace("partition: gpu, gpu_type: h100, gpus: 4",
                                "partition: gpu2, gpu_type: h100, gpus: 4"))
    with pytest.raises(site_module.SiteError, match="partition 'gpu2' is not in 'partitions'"):
        site_module.load(bad)


def node(name, state="IDLE", flags=(), gpus=4, reason=""):
    return slurm.Node(name, state, "", ("gpu",), f"gpu:h100:{gpus}", "gpu:h100:0", flags, reason)


def test_a_session_only_unusable_nodes_could_run_is_refused_with_their_reasons():
    from aifactory.spawner.request import check_nodes
    request = ask({"profile": "h100-4"})
    nodes = [node("gpu01", flags=("DRAIN",), reason="disk failure"),
             node("gpu02", "DOWN", ("NOT_RESPONDING",)), node("gpu03")]
    with pytest.raises(RequestError, match=r"gpu01 drained \(disk failure\); gpu02 down, not "
                                           r"responding\. Nothing was submitted"):
        check_nodes(request, nodes, RESERVATIONS, held={"gpu03"})  # gpu03: a course's
    check_nodes(request, nodes, RESERVATIONS, held=set())  # gpu03 free: it may wait for it
    small = [node("gpu01", flags=("DRAIN",)), node("gpu02", gpus=2)]
    with pytest.raises(RequestError):
        check_nodes(request, small, RESERVATIONS, held=set())  # gpu02 has too few GPUs
    check_nodes(ask({"profile": "h100-1"}), small, RESERVATIONS, held=set())


def test_the_same_node_rule_serves_the_dask_cost_check():
    from aifactory.availability import only_unusable_nodes
    from aifactory.report import unusable_words
    nodes = [node("gpu01", "MIXED", ("DRAIN",), reason="fan"), node("gpu02", "DOWN")]
    stuck = only_unusable_nodes(nodes, "gpu", "h100", 4)
    assert unusable_words(stuck) == "gpu01 draining (fan); gpu02 down"
    assert only_unusable_nodes(nodes + [node("gpu03")], "gpu", "h100", 4) == []
    assert only_unusable_nodes(nodes, "cpu", "", 0) == []  # no node of that partition here


def test_each_profile_offers_the_environments_of_its_partition():
    environment = {p.slug: [c.key for c in p.options[-1].choices] for p in SITE.profiles}
    assert environment["cpu"] == ["aifactory", "classic-ml"]
    assert environment["h100-1"] == ["aifactory"]  # classic-ml is for CPU nodes only
    assert environment["course-dl101"] == ["aifactory"]  # the course narrows it
    assert ask({"profile": "cpu"}).environment == "aifactory"  # the default one
    chosen = ask({"profile": "cpu", "option_environment": "classic-ml"})
    assert chosen.environment == "classic-ml"
    # Stored options say the environment the same way, and resolve to the same request.
    assert chosen.to_options()["option_environment"] == "classic-ml"
    assert ask(chosen.to_options()) == chosen


ENVIRONMENT_BAD = [
    ({"profile": "h100-1", "option_environment": "classic-ml"},
     "The 1× H100, 4 h profile does not offer the software environment 'classic-ml'; it offers "
     "aifactory."),
    ({"profile": "cpu", "option_environment": "classic-ml", "partition": "gpu", "gpus": "1"},
     "scikit-learn and pandas (classic-ml 2025.1) is not offered on the gpu partition (only on "
     "cpu)"),
    ({"profile": "cpu", "option_environment": "tensorflow"}, "does not offer the software "
                                                              "environment 'tensorflow'"),
    ({"profile": "cpu", "option_environment": "classic-ml; module load x"}, "use only letters"),
]


@pytest.mark.parametrize("form,message", ENVIRONMENT_BAD, ids=[m[:40] for _, m in ENVIRONMENT_BAD])
def test_an_environment_not_offered_is_refused_with_a_sentence(form, message):
    with pytest.raises(RequestError, match=re.escape(message)):
        ask(form)


def test_an_environment_whose_module_is_missing_is_refused():
    request = ask({"profile": "cpu", "option_environment": "classic-ml"})
    there = {"/opt/aifactory/modules/classic-ml/2025.1.lua", "/opt/aifactory/modules/aifactory/0.1"}
    check_modules(SITE, request, there.__contains__)  # a Lua modulefile
    check_modules(SITE, ask({"profile": "cpu"}), there.__contains__)  # a Tcl one
    with pytest.raises(RequestError, match=re.escape(
            "needs the module classic-ml/2025.1, which is not in the site's module tree "
            "(/opt/aifactory/modules). Nothing was submitted")):
        check_modules(SITE, request, set().__contains__)


def test_the_site_file_checks_its_environments(tmp_path):
    text = (Path(__file__).resolve().parents[1] / "hub_config" / "site.yaml").read_text()
    bad = tmp_path / "site.yaml"
    cases = {
        "modules: [classic-ml/../../etc]": r"environments\[1\]\.modules\[0\]: 'classic-ml/"
                                           r"../../etc' is not a module name",
        "modules: [-f/x]": r"'-f/x' is not a module name",
        "partitions: [cpu2]": r"environment classic-ml: partition 'cpu2' is not in 'partitions'",
        "environments: [tensorflow]": r"profile course-dl101: environment 'tensorflow' is not in",
        "environments: [classic-ml]": r"profile course-dl101: no environment is offered on its "
                                      r"partition gpu",
        'display_name: "PyTorch\\n#SBATCH --uid=0"': r"line \d+, environment aifactory: "
                                                  r"display_name must be one line",
    }
    for replacement, message in cases.items():
        key = replacement.split(":")[0]
        old = {"modules": "modules: [classic-ml/2025.1]", "partitions": "partitions: [cpu]\n",
               "environments": "environments: [aifactory]",
               "display_name": 'display_name: "PyTorch and Dask (aifactory 0.1)"'}[key]
        new = replacement + ("\n" if old.endswith("\n") else "")
        assert old in text
        bad.write_text(text.replace(old, new))
        with pytest.raises(site_module.SiteError, match=message):
            site_module.load(bad)
    bad.write_text(text.replace("  path: [/opt/aifactory/modules]\n", "").replace(
        "modules:\n  init: /usr/share/lmod/lmod/init/bash\n", ""))
    with pytest.raises(site_module.SiteError, match="environments need 'modules'"):
        site_module.load(bad)


def test_a_cost_of_minutes_is_written_in_minutes_not_a_long_fraction_of_an_hour():
    from aifactory.spawner.request import SessionRequest
    five = SessionRequest(profile="x", partition="gpu", gpu_type="h100", gpus=1, cpus=4,
                          memory_gb=8, walltime="00:05:00", account="a", reservation="",
                          idle_minutes=0)
    assert five.describe_cost() == "1 GPU × 5 min = 0.08 GPU-hours"
    ninety = SessionRequest(profile="x", partition="gpu", gpu_type="h100", gpus=2, cpus=4,
                            memory_gb=8, walltime="01:30:00", account="a", reservation="",
                            idle_minutes=0)
    assert ninety.describe_cost() == "2 GPUs × 1.5 h = 3 GPU-hours"
