//! Multi-node and multi-process integration tests (one test binary, per the ripgrep style).

mod backup;
mod chaos;
mod chat;
mod docs;
mod durability;
mod federation;
mod http;
mod layout;
mod members;
mod messaging;
mod operators;
mod people;
mod presence;
mod processes;
mod resync;
mod rogue;
mod single_node;
