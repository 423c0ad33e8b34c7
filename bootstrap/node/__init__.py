"""What a node needs to run pods: the locally built pause image and containerd's config."""
