"""The cluster PKI of the Kubernetes PKI document (seed 004, part 5).

`table` is the specification as data, `certs` makes and inspects certificates, `kubeconfig`
renders the kubeconfigs, `issue` keeps a directory of every host's files up to date through
`files` (which never follows a link and writes atomically), and `expiry` tells which
certificates end soon.
"""

from bootstrap.pki.expiry import near_expiry
from bootstrap.pki.issue import HostFile, HostPKI, PKIResult, files_of, generate
from bootstrap.pki.table import flags_for

__all__ = ["HostFile", "HostPKI", "PKIResult", "files_of", "flags_for", "generate",
           "near_expiry"]
