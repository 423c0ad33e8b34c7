"""The control plane's services (kube-apiserver, kube-controller-manager, kube-scheduler):
their configuration files and command lines as pure functions of the inventory
(`config`, `commands`), and the local Secrets encryption key (`encryption`). The step that
places and rolls them out is `bootstrap.steps.control_plane`."""
