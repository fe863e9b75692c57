//! Multi-node and multi-process integration tests (one test binary, per the ripgrep style).

mod durability;
mod processes;
mod single_node;
