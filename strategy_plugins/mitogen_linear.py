# -*- coding: utf-8 -*-
"""Ansible's linear strategy on Mitogen's connection layer (mitogen from PyPI).

Mitogen keeps one Python interpreter per host for the whole run instead of
starting one per task, which halves a no-change `site.yml` here. ansible.cfg
makes it the default; `ANSIBLE_STRATEGY=linear` runs plain Ansible.
"""
from __future__ import absolute_import, division, print_function

import ansible.plugins.strategy.linear
import ansible_mitogen.strategy

__metaclass__ = type


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, ansible.plugins.strategy.linear.StrategyModule):
    pass
