#!/usr/bin/env bash
# Installs Slurm and munge for the single-node Slurm test (tests/test_slurm.py), and nothing else:
# the test writes its own slurm.conf into a temporary directory and starts/stops the daemons itself.
# Idempotent: does nothing when slurmctld, slurmd, munged and sbatch are already on PATH.
# Never fails the caller: when the install is impossible it prints why, and the Slurm test skips.
set -uo pipefail

have_all() {
  for bin in slurmctld slurmd munged sbatch squeue; do
    command -v "$bin" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "$bin" >/dev/null 2>&1 || return 1
  done
}

if have_all; then
  echo "slurm.sh: Slurm and munge already installed"
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "slurm.sh: not root, cannot install slurm-wlm/munge; the slurm tests will skip"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "slurm.sh: no apt-get on this machine, cannot install slurm-wlm/munge; the slurm tests will skip"
  exit 0
fi

log=/tmp/trainrelay-slurm-apt.log
# The Debian packages start their services through systemd when it runs; the test starts its own
# daemons with its own config, so keep the package scripts from starting any (policy-rc.d 101).
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
fi
if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge) >"$log" 2>&1; then
  echo "slurm.sh: installed $(PATH="$PATH:/usr/sbin" slurmctld -V 2>/dev/null || echo slurm-wlm) and munge"
else
  echo "slurm.sh: apt-get install slurm-wlm munge failed (see $log); the slurm tests will skip"
fi
[ "$own_policy" = "1" ] && rm -f "$policy"
exit 0
