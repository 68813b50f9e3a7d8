"""The checked-YAML reader: one sentence naming the file, the line and the key path (no cluster)."""

import re
from pathlib import Path

import pytest

from aifactory import checked_yaml, names
from aifactory import site_description as site_module
from aifactory.checked_yaml import CheckedYamlError
from aifactory.cluster import demo as demo_module

REPO = Path(__file__).resolve().parents[1]
NAME = (str, names.USER_RE, "a user name")
SCHEMA = {
    "cluster": str,
    "limits?": {"gpus": (int, 0, 16), "walltime?": (str, names.SLURM_TIME_RE, "[D-]HH:MM:SS"),
                "idle?": (float, 0, None)},
    "period?": {"monthly", "yearly"},
    "teams?": [{"name": NAME, "members": [NAME, ...]}],
    "groups?": ("mapping", (str, names.GROUP_RE, "a group name"), [NAME], ...),
}


def load(tmp_path, text: str, schema=SCHEMA):
    path = tmp_path / "file.yaml"
    path.write_text(text)
    return checked_yaml.load(path, schema)


def error(tmp_path, text: str, schema=SCHEMA) -> str:
    with pytest.raises(CheckedYamlError) as err:
        load(tmp_path, text, schema)
    return str(err.value).replace(str(tmp_path / "file.yaml"), "file.yaml")


def test_valid_data_comes_back_as_plain_values(tmp_path):
    doc = load(tmp_path, "cluster: demo\nlimits:\n  gpus: 4\n  walltime: '2-00:00:00'\n"
                         "teams:\n  - {name: alice, members: [bob]}\ngroups: {admins: [carol]}\n")
    assert doc.data == {"cluster": "demo", "limits": {"gpus": 4, "walltime": "2-00:00:00"},
                        "teams": [{"name": "alice", "members": ["bob"]}],
                        "groups": {"admins": ["carol"]}}
    assert (doc.line("limits.walltime"), doc.line("teams[0].members[0]"), doc.line("groups")) == (
        4, 6, 7)
    assert doc.line("teams[0].nothing.here") == 6  # the nearest key path around it


def test_an_optional_key_with_no_value_counts_as_left_out(tmp_path):
    assert load(tmp_path, "cluster: demo\nlimits:\nteams:\n").data == {"cluster": "demo"}


def test_a_wrong_type_names_the_line_and_the_key_path(tmp_path):
    text = "cluster: demo\nlimits:\n  gpus: lots\n"
    assert error(tmp_path, text) == "file.yaml, line 3, limits.gpus: 'lots' is not a whole number."
    assert error(tmp_path, "cluster: demo\nlimits: {gpus: true}\n") == (
        "file.yaml, line 2, limits.gpus: True is not a whole number.")
    assert error(tmp_path, "cluster: [demo]\n") == (
        "file.yaml, line 1, cluster: ['demo'] is not text.")
    assert error(tmp_path, "- cluster\n") == (
        "file.yaml, line 1, the file: ['cluster'] is not a mapping.")


def test_an_unknown_key_is_refused_by_name(tmp_path):
    assert error(tmp_path, "cluster: demo\nlimits:\n  gpus: 1\n  colour: blue\n") == (
        "file.yaml, line 4, limits.colour: unknown key; limits may set only gpus, walltime, idle.")
    assert error(tmp_path, "cluster: demo\ncolor: red\n").startswith(
        "file.yaml, line 2, color: unknown key; the file may set only cluster, limits, period")


def test_a_missing_required_key_names_its_mapping(tmp_path):
    assert error(tmp_path, "# comment\nlimits: {gpus: 1}\n") == (
        "file.yaml, line 2, the file is missing 'cluster'.")
    assert error(tmp_path, "cluster: demo\nlimits:\n  walltime: '01:00:00'\n") == (
        "file.yaml, line 2, limits is missing 'gpus'.")


def test_a_value_outside_its_pattern_range_or_choices(tmp_path):
    assert error(tmp_path, "cluster: demo\nlimits: {gpus: 1, walltime: '9'}\n") == (
        "file.yaml, line 2, limits.walltime: '9' is not [D-]HH:MM:SS.")
    assert error(tmp_path, "cluster: demo\nlimits: {gpus: 1, walltime: '01:60:00'}\n").endswith(
        "'01:60:00' is not [D-]HH:MM:SS.")
    assert error(tmp_path, "cluster: demo\nlimits: {gpus: 17}\n") == (
        "file.yaml, line 2, limits.gpus: 17 is not between 0 and 16.")
    assert error(tmp_path, "cluster: demo\nlimits: {gpus: 1, idle: 0}\n") == (
        "file.yaml, line 2, limits.idle: 0 is not above 0.")
    assert error(tmp_path, "cluster: demo\nperiod: weekly\n") == (
        "file.yaml, line 2, period: 'weekly' is not one of monthly, yearly.")


def test_nested_lists_name_each_index(tmp_path):
    text = ("cluster: demo\nteams:\n  - name: alice\n    members: [bob]\n"
            "  - name: dave\n    members:\n      - carol\n      - 'Eve Smith'\n")
    assert error(tmp_path, text) == (
        "file.yaml, line 8, teams[1].members[1]: 'Eve Smith' is not a user name.")
    assert error(tmp_path, "cluster: demo\nteams:\n  - {name: alice, members: []}\n") == (
        "file.yaml, line 3, teams[0].members: needs at least one entry.")
    assert error(tmp_path, "cluster: demo\nteams: {name: alice}\n") == (
        "file.yaml, line 2, teams: {'name': 'alice'} is not a list.")


def test_free_keys_are_checked_against_their_pattern(tmp_path):
    assert error(tmp_path, "cluster: demo\ngroups:\n  admins: [carol]\n  Ops Team: [dave]\n") == (
        "file.yaml, line 4, groups.Ops Team: 'Ops Team' is not a group name.")
    assert error(tmp_path, "cluster: demo\ngroups: {}\n") == (
        "file.yaml, line 2, groups: needs at least one entry.")


def test_a_name_with_a_newline_is_not_a_name():
    assert names.USER_RE.match("alice") and not names.USER_RE.match("alice\n")
    assert not names.ACCOUNT_RE.match("proj\nMaxJobs=1")


def test_yaml_that_does_not_parse_or_repeats_a_key(tmp_path):
    assert re.fullmatch(r"file\.yaml: is not valid YAML at line 3 \(.+\)\.",
                        error(tmp_path, "cluster: demo\nteams: [\n"))
    assert error(tmp_path, "cluster: demo\nlimits: {gpus: 1}\ncluster: other\n") == (
        "file.yaml: is not valid YAML at line 3 (cluster is given twice).")
    assert error(tmp_path, "# nothing yet\n") == "file.yaml: is empty."
    with pytest.raises(CheckedYamlError, match=r"nope\.yaml: cannot be read \("):
        checked_yaml.load(tmp_path / "nope.yaml", SCHEMA)


def test_the_shipped_files_load_and_their_errors_are_the_readers():
    site = checked_yaml.load(REPO / "hub_config/site.yaml", site_module.SCHEMA)
    assert [p["slug"] for p in site.data["profiles"]] == [
        p.slug for p in site_module.load(REPO / "hub_config/site.yaml").profiles]
    demo = checked_yaml.load(REPO / "hub_config/cluster/demo.yaml", demo_module.SCHEMA)
    assert [n["name"] for n in demo.data["nodes"]] == [
        n.name for n in demo_module.load(REPO / "hub_config/cluster/demo.yaml").nodes]
    assert issubclass(site_module.SiteError, CheckedYamlError)
    assert issubclass(demo_module.DemoFileError, CheckedYamlError)
    dask_keys = {key.rstrip("?") for key in site_module.SCHEMA["dask?"]}
    assert dask_keys == set(site_module.DASK_DEFAULTS)


def test_a_rule_after_the_schema_names_the_line_of_its_key(tmp_path):
    text = (REPO / "hub_config/site.yaml").read_text()
    path = tmp_path / "site.yaml"
    path.write_text(text.replace("slug: h100-4", "slug: h100-1"))
    line = text.splitlines().index("    slug: h100-4") + 1
    with pytest.raises(site_module.SiteError) as err:
        site_module.load(path)
    assert str(err.value) == f"{path}, line {line}, two profiles have the same slug."


def test_an_alias_is_refused_with_its_line_before_it_can_nest(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text("a: &x [1, 2]\nb: [*x, *x]\n")
    with pytest.raises(CheckedYamlError, match=r"line 2: YAML aliases \(\*name\) are not allowed"):
        checked_yaml.load(path, None, CheckedYamlError)
