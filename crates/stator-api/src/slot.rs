//! Redis-Cluster key slots. (to be written)
