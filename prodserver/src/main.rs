//! prodserver
fn main() {}
