"""`aifactory site install`'s refusals, without an environment to install into (the live
test, tests/test_site_install_live.py, installs into a real one)."""

from __future__ import annotations

import os
import stat

import pytest

from aifactory import site_install


def test_a_folder_that_is_no_environment_is_refused_and_left_as_it_was(tmp_path):
    with pytest.raises(site_install.InstallError, match="is not a Python environment"):
        site_install.install(tmp_path, x_folders=())
    assert not any(tmp_path.iterdir())


def test_an_x_folder_someone_planted_as_a_link_is_refused_and_its_target_unchanged(tmp_path):
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    planted = tmp_path / ".X11-unix"
    planted.symlink_to(target)
    with pytest.raises(site_install.InstallError, match="is a link or not root's"):
        site_install._x_folder(planted)
    assert stat.S_IMODE(target.stat().st_mode) == 0o700


def test_an_x_folder_made_first_by_someone_else_is_refused(tmp_path):
    theirs = tmp_path / ".ICE-unix"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 65534, 65534)  # nobody's
    with pytest.raises(site_install.InstallError, match="remove it, then run again"):
        site_install._x_folder(theirs)
    assert stat.S_IMODE(theirs.stat().st_mode) == 0o755


def test_root_s_own_x_folder_becomes_1777(tmp_path):
    mine = tmp_path / ".X11-unix"
    site_install._x_folder(mine)
    assert stat.S_IMODE(mine.stat().st_mode) == 0o1777


def test_every_file_it_places_is_in_the_package():
    for placed in site_install.PLACED:
        assert (site_install.FILES / placed.source).is_file(), placed.source
