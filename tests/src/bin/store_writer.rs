//! Test helper: writes UserInfo updates to a store in a loop, printing `ACK uid count` after
//! each one the store acknowledged as durable. The durability test kills it with SIGKILL at an
//! arbitrary moment and checks every acknowledged update survived.

use std::io::Write;
use std::sync::Arc;

use gossip_common::{EventCount, Keypair, Signed, UserId, UserInfo};
use gossip_server::store::{Mode, Store};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).expect("usage: store-writer DIR");
    let (store, _) = Store::open(std::path::Path::new(&dir))?;
    let stdout = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut tasks = Vec::new();
    // Eight concurrent writers so group commit batches several updates per fsync.
    for w in 0..8u64 {
        let store = Arc::clone(&store);
        let stdout = Arc::clone(&stdout);
        tasks.push(tokio::spawn(async move {
            let key = Keypair::generate();
            let uid = UserId(1000 + w);
            let mut info = UserInfo::new(uid, key.public());
            store
                .apply_user_info(Signed::sign(info.clone(), &key)?, Mode::Create, "writer")
                .await?;
            for count in 1u32.. {
                info.event_count = EventCount::new(count, false);
                info.status_message = format!("update {count} {}", "x".repeat(200));
                store
                    .apply_user_info(Signed::sign(info.clone(), &key)?, Mode::Update, "writer")
                    .await?;
                let mut out = stdout.lock().unwrap();
                writeln!(out, "ACK {} {}", uid, count)?;
                out.flush()?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}
