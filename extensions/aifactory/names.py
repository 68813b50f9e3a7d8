"""Name patterns: what a name of each kind (Slurm account, Unix user, profile, ...) may look like.

Names end up in Slurm config lines, sacctmgr and scontrol arguments, URLs and Unix accounts, so
each kind has one strict pattern here, used wherever such a name comes in (the site and demo
files, the service's URLs). Where two places used to differ, the stricter shape that the
shipped files and the tests' data still pass was kept. Every pattern ends in \\Z, not $: $ also
matches before a final newline, and a name with a newline could start a line of its own in a
Slurm config.
"""

import re

# Unix user names: Debian's NAME_REGEX (adduser.conf: ^[a-z][-a-z0-9_]*), at most 32
# characters (useradd's limit); they are also the hub's and Slurm's user names. The service's
# old shape also took '_' first and '.'.
USER_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
# Users and accounts as a site's own directory and Slurm may already hold them (a dot in
# "j.smith", an account "2024-x"): what the service's URLs and the CLI accept. Only names the
# demo makes itself, and those in the site file, must follow the strict shapes.
SITE_USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\Z")
SITE_ACCOUNT_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}\Z")
# Unix groups, which are also the hub's groups (course participants, coordinator_groups):
# Debian checks group names with the same NAME_REGEX as users.
GROUP_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
# Slurm accounts: lower-case, as sacctmgr stores them (it lower-cases what it is given, so
# "Proj" here would not be the account Slurm has); the service's old shape also took a digit or
# '.' first and 64 characters, the site's and demo's did not.
ACCOUNT_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
# Slurm partitions: lower-case like accounts; they are written into slurm.conf and sbatch lines.
PARTITION_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
# Slurm reservations: the same shape (ReservationName= in scontrol, --reservation in sbatch).
RESERVATION_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
# Slurm QOS names: the same shape (--qos in sbatch, QOS= in sacctmgr).
QOS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
# Slurm node names (gpu01): they are also host names in /etc/hosts and network namespaces.
NODE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
# The Slurm cluster's name (ClusterName=, lower-case in slurm.conf and the accounting database).
CLUSTER_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
# GPU types (h100): the type in Gres=gpu:h100:4 and --gres. The demo allowed a digit first and
# '.', the site a letter first and 32 characters: this is what both accepted.
GPU_TYPE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,15}\Z")
# Profile slugs and the keys of their options' choices (h100-4, 1h): they travel in spawn
# links (/hub/spawn?opt-profile=h100-4), so only lower-case letters, digits and '-'.
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}\Z")
# Course names (dl101): in the service's URLs (/courses/dl101), as the folder ~/dl101 in each
# participant's home and as the demo's material keys, which wanted a letter first.
COURSE_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}\Z")
# Names of a profile's options (walltime): part of the spawn form's field names.
OPTION_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
# Lmod module names (classic-ml/2025.1, compiler/gcc/13.2): path parts under a MODULEPATH
# folder, written into the session's `module load` line; no part starts with '.' ('..') or
# '-' (an option of `module`).
MODULE_RE = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9_.+-]{0,63}(/[A-Za-z0-9_+][A-Za-z0-9_.+-]{0,63}){0,3}\Z")
# A Slurm job id as sbatch --parsable prints it; Slurm's ids are 32-bit, 12 digits leave room.
JOB_ID_RE = re.compile(r"^[0-9]{1,12}\Z")
# A job id or one task of a job array (12078642_6), as squeue and sacct print them and scancel
# takes them.
JOB_OR_TASK_ID_RE = re.compile(r"^[0-9]{1,12}(_[0-9]{1,12})?\Z")
# The site's billing unit (SBU, AIU): printed after every amount, so short and plain.
UNIT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,19}\Z")
# The demo's bridge (aif0): a Linux interface name (at most 15 characters) of letters and digits.
BRIDGE_RE = re.compile(r"^[a-z][a-z0-9]{1,11}\Z")
# Not a name, but checked with them: a Slurm time limit [D-]HH:MM:SS (2-00:00:00, 04:00:00),
# minutes and seconds below 60.
SLURM_TIME_RE = re.compile(r"^(?:([0-9]{1,2})-)?([0-9]{1,3}):([0-5][0-9]):([0-5][0-9])\Z")
