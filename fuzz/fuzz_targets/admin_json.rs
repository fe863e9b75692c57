//! Fuzzes the admin socket's request parser: any line a local user can write to the socket.
//! Invariants: no panic; a request that parses serialises to JSON that parses to the same
//! request.
#![no_main]

use gossip_common::admin::AdminRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(req) = serde_json::from_str::<AdminRequest>(line) {
        let again = serde_json::to_string(&req).expect("a request serialises");
        let back: AdminRequest = serde_json::from_str(&again).expect("its JSON parses");
        assert_eq!(back, req);
    }
});
