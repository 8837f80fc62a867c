//! End-to-end tests with real processes (containerd, runc, the distribution registry, our
//! daemon and snapshotter) live in this crate's `tests/` folder once those parts exist. Unit and
//! format tests live beside the code of each crate.
