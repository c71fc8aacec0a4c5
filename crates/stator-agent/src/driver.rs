//! Supervises stateless service instances and jobs as child processes.
