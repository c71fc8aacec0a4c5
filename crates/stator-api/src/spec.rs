//! Specs. (to be written)
