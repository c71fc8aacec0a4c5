//! The agent <-> server protocol. (being written)
