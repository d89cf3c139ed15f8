# -*- coding: utf-8 -*-
"""Ansible's linear strategy on Mitogen's connection layer (mitogen from PyPI).

Mitogen keeps one Python interpreter per host for the whole run instead of
starting one per task, which halves a no-change `site.yml` here. ansible.cfg
makes it the default; `ANSIBLE_STRATEGY=linear` runs plain Ansible.
"""
from __future__ import absolute_import, division, print_function

import ansible.plugins.strategy.linear
import ansible_mitogen.affinity
import ansible_mitogen.strategy

__metaclass__ = type

# Mitogen pins its multiplexer to CPU 0 and, below 4 CPUs, the Ansible process, its workers and
# every command they start to the one CPU left. On a 2-core host that put each run, and any two
# runs at once, on a single core: two no-change site.yml side by side took 35 s each against
# 19 s alone, with the other core idle. Its base Policy places nothing; the kernel schedules.
ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, ansible.plugins.strategy.linear.StrategyModule):
    pass
