"""How an ansible-playbook run of this project uses the host (ansible.cfg, strategy_plugins/)."""
import os

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


def _cpu_list(cpus):
    """The kernel's Cpus_allowed_list form of a set of CPUs, for one range: 0-1, or 0."""
    low, high = min(cpus), max(cpus)
    return str(low) if low == high else "%d-%d" % (low, high)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs a host with 2 CPUs or more")
def test_a_run_and_the_commands_it_starts_may_use_every_cpu(tmp_path):
    """Mitogen's default placement pinned a run to one CPU below 4: two runs at once took twice as long."""
    cpus = os.sched_getaffinity(0)
    if cpus != set(range(min(cpus), max(cpus) + 1)):
        pytest.skip("the test's own CPUs are not one range: %s" % sorted(cpus))
    playbook = tmp_path / "cpus.yml"
    playbook.write_text(PLAYBOOK)
    run = run_playbook(str(playbook))
    assert run.rc == 0, run
    allowed = "Cpus_allowed_list:\t%s" % _cpu_list(cpus)
    assert "worker %s; command %s" % (allowed, allowed) in run.output.replace("\\t", "\t"), run
