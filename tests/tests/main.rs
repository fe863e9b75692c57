//! Multi-node and multi-process integration tests (one test binary, per the ripgrep style).

mod durability;
mod single_node;
