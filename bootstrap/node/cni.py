"""The pod network we ship: a bridge per node with host-local addresses from the node's pod
CIDR, masqueraded when leaving the node, and port mappings (hostPort).

Why this one: it needs nothing but the distribution's CNI plugins (Debian's
`containernetworking-plugins`), no daemon and no image, and the node's pod CIDR comes from
the controller-manager (`--allocate-node-cidrs`) through the kubelet to containerd, which
renders this template into its `conf_dir` (`{{.PodCIDRRanges}}`, `{{.Routes}}`). So an
auto-scaled node gets its range with nothing from us. Pods reach the control plane, other
nodes and the outside through the node's address; traffic between pods on different nodes
needs routes to each node's pod CIDR (the VPC's, or a real network plugin's).

Replaceable: a cluster that brings its own network plugin removes
`/etc/cni/mzk-pods.conflist.template` from the containerd config (cluster.cni: external)
and installs the plugin's own configuration into /etc/cni/net.d.
"""

from __future__ import annotations

TEMPLATE_PATH = "/etc/cni/mzk-pods.conflist.template"
BIN_DIR = "/usr/lib/cni"  # Debian's and Ubuntu's containernetworking-plugins
CONF_DIR = "/etc/cni/net.d"
NETWORK = "mzk-pods"
BRIDGE = "mzk0"

TEMPLATE = """{
  "cniVersion": "1.0.0",
  "name": "%(network)s",
  "plugins": [
    {"type": "bridge", "bridge": "%(bridge)s", "isGateway": true, "ipMasq": true,
     "hairpinMode": true,
     "ipam": {"type": "host-local",
              "ranges": [{{range $i, $r := .PodCIDRRanges}}{{if $i}}, {{end}}
                         [{"subnet": "{{$r}}"}]{{end}}],
              "routes": [{{range $i, $r := .Routes}}{{if $i}}, {{end}}{"dst": "{{$r}}"}{{end}}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
""" % {"network": NETWORK, "bridge": BRIDGE}  # noqa: UP031 - Go template braces


def template() -> bytes:
    return TEMPLATE.encode()
