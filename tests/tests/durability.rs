//! Crash safety of the datafiles with a real process and a real `kill -9`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use gossip_common::UserId;
use gossip_server::store::Store;
use gossip_tests::bin_path;

#[tokio::test]
async fn kill_9_mid_write_keeps_every_acknowledged_update() {
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(bin_path("store-writer"))
            .arg(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut acked: HashMap<UserId, u32> = HashMap::new();
        let mut lines = BufReader::new(stdout).lines();
        // Kill at a different point each round, while writes are in full flow.
        let kill_after = 200 + round * 173;
        for _ in 0..kill_after {
            let line = lines.next().expect("writer exited early").unwrap();
            let mut parts = line.split_whitespace().skip(1);
            let uid: UserId = parts.next().unwrap().parse().unwrap();
            let count: u32 = parts.next().unwrap().parse().unwrap();
            acked.insert(uid, count);
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Acks printed after our last read but before the kill count too.
        for line in lines.map_while(Result::ok) {
            let mut parts = line.split_whitespace().skip(1);
            if let (Some(u), Some(c)) = (parts.next(), parts.next()) {
                if let (Ok(u), Ok(c)) = (u.parse(), c.parse()) {
                    acked.insert(u, c);
                }
            }
        }
        let (store, report) = Store::open(dir.path()).unwrap();
        assert_eq!(report.bad_signatures, 0);
        assert_eq!(report.corrupt_lines, 0, "only the tail may be torn");
        for (uid, count) in &acked {
            let stored = store.user(*uid).unwrap_or_else(|| panic!("{uid} lost"));
            assert!(
                stored.event_count.count >= *count,
                "round {round}: {uid} acknowledged count {count} but recovered {}",
                stored.event_count.count
            );
        }
        assert!(acked.len() >= 2, "several writers were acknowledged");
    }
}
