"""The pod network we ship: a bridge per node with host-local addresses from the node's pod
CIDR, and port mappings (hostPort); between nodes, the pod network agent's VXLAN overlay.

Why this one: it needs nothing but the distribution's CNI plugins (Debian's
`containernetworking-plugins`), no image, and the node's pod CIDR comes from the
controller-manager (`--allocate-node-cidrs`) through the kubelet to containerd, which
renders this template into its `conf_dir` (`{{.PodCIDRRanges}}`, `{{.Routes}}`). So an
auto-scaled node gets its range with nothing from us. The routes to other nodes' pod CIDRs
come from bootstrap.node.pod_network (`mzk-pod-network` on every node), which also
masquerades what pods send outside the cluster CIDR: so the bridge does not masquerade
(`ipMasq: false`), and a pod's packets reach pods on other nodes with its own address.

MTU 1450: the overlay's VXLAN header takes 50 bytes, and 1450 fits any underlay of at
least 1500. AWS's networks carry 9001 inside a VPC (the agent's device follows the
underlay: 8951 there), so pods could use up to 8951; one value for every underlay keeps the
lab and AWS alike, at the cost of larger packets on AWS.

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
MTU = 1450  # fits the VXLAN overlay (50 bytes) on any underlay of 1500 or more

TEMPLATE = """{
  "cniVersion": "1.0.0",
  "name": "%(network)s",
  "plugins": [
    {"type": "bridge", "bridge": "%(bridge)s", "isGateway": true, "ipMasq": false,
     "hairpinMode": true, "mtu": %(mtu)d,
     "ipam": {"type": "host-local",
              "ranges": [{{range $i, $r := .PodCIDRRanges}}{{if $i}}, {{end}}
                         [{"subnet": "{{$r}}"}]{{end}}],
              "routes": [{{range $i, $r := .Routes}}{{if $i}}, {{end}}{"dst": "{{$r}}"}{{end}}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
""" % {"network": NETWORK, "bridge": BRIDGE, "mtu": MTU}  # noqa: UP031 - Go template braces


def template() -> bytes:
    return TEMPLATE.encode()
