"""Egress from the control plane to the nodes."""
