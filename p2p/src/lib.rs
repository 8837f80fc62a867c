//! The P2P distribution tree (not yet built): root and agent HTTP range caches speaking
//! overlaybd's `/<api-key>/<url>` request form, per-blob tree topology, root selection by
//! rendezvous hashing, and piece verification.
