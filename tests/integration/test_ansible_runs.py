"""How an ansible-playbook run of this project uses the host (ansible.cfg, strategy_plugins/)."""
import os
import re

import pytest

from conftest import run_playbook

PLAYBOOK = """\
- name: Report the CPUs the run's processes may use
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Read the CPUs a command the run starts may use
      ansible.builtin.command: grep Cpus_allowed_list /proc/self/status
      register: command_cpus
      changed_when: false

    - name: Print what the worker and the command may use
      ansible.builtin.debug:
        msg: "worker {{ lookup('ansible.builtin.pipe', 'grep Cpus_allowed_list /proc/self/status') }};
          command {{ command_cpus.stdout }}"
"""


def _cpus(listed):
    """The set of CPUs a Cpus_allowed_list value names: 0-1,3 is {0, 1, 3}."""
    cpus = set()
    for part in listed.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs a host with 2 CPUs or more")
def test_a_run_and_the_commands_it_starts_may_use_every_cpu(tmp_path):
    """Mitogen's default placement pinned a run to one CPU below 4: two runs at once took twice as long."""
    playbook = tmp_path / "cpus.yml"
    playbook.write_text(PLAYBOOK)
    run = run_playbook(str(playbook))
    assert run.rc == 0, run
    found = re.search(r"worker Cpus_allowed_list:\\t([0-9,-]+); command Cpus_allowed_list:\\t([0-9,-]+)", run.output)
    assert found, run
    assert (_cpus(found.group(1)), _cpus(found.group(2))) == (os.sched_getaffinity(0),) * 2, run
