//! The CNI plugin side of the redirector: the `redirector-cni` binary (this
//! binary under that name, chained after the cluster's own plugins) tells
//! the daemon about each pod as it is created and deleted; `redirector cni
//! install` and `uninstall` put it into the node's CNI configuration and
//! take it out again.

pub(crate) mod protocol;
