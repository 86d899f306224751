//! Being written on its own branch.
