//! lb controller library
