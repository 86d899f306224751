//! Empty on purpose: lets `redirector-user` list this crate as a
//! build-dependency so cargo rebuilds it when the kernel programs change.
#![no_std]
