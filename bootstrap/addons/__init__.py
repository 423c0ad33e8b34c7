"""Cluster add-ons: the objects every cluster runs on its nodes (kube-proxy, CoreDNS, the
storage driver), rendered from the inventory as plain manifests and applied by one step
(bootstrap.steps.addons): server-side, our field manager, pruned when no longer rendered.
"""
