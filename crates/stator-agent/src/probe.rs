//! Readiness probes.
