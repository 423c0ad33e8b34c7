"""multizone-k8s bootstrap: inventory, PKI and host work over SSH. Never imports pulumi."""
