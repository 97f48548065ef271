//! testbed (being written)
