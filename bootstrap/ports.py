"""Every port the design opens, in one place (the Pulumi security groups use these too)."""

API_SERVER = 6443
KUBELET = 10250
ETCD_CLIENT, ETCD_PEER = 2379, 2380
# 2381 is etcd's conventional metrics port; the events cluster takes the next two.
ETCD_EVENTS_CLIENT, ETCD_EVENTS_PEER = 2382, 2383
KONNECTIVITY_AGENT = 8132  # agents dial the proxy-server here
KONNECTIVITY_ADMIN = 8133
KONNECTIVITY_HEALTH = 8134
SSH = 22
