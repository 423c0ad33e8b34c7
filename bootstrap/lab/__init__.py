"""The local lab: a bastion and three zones of SSH hosts in network namespaces.

`python -m bootstrap lab up|down|status`; see `bootstrap.lab.command` and
`bootstrap.lab.build`.
"""
