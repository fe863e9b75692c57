//! Online backup and restore against real processes: `prodserver backup` of a `gossipd` under
//! write load, `gossipd --restore` into a new data directory, and a new `gossipd` on it that
//! holds every update acknowledged before the backup began (and the mail waiting then).

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gossip_client::{Event, GossipClient};
use gossip_common::admin::AdminRequest;
use gossip_common::{Keypair, UserId};
use gossip_tests::bin_path;
use gossip_tests::gossipd::{Gossipd, Spec};

/// Writers changing their status as fast as the server acknowledges, during the backup.
const WRITERS: usize = 6;

/// Runs `gossipd --restore ARCHIVE --data-dir DIR`.
fn gossipd_restore(archive: &std::path::Path, dir: &std::path::Path) -> std::process::Output {
    Command::new(bin_path("gossipd"))
        .arg("--restore")
        .arg(archive)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap()
}

/// The `n` of the last `w{i}-{n}` status message in a record's XML.
fn generation(raw: &str, writer: usize) -> Option<u64> {
    let tag = format!("w{writer}-");
    let at = raw.rfind(&tag)? + tag.len();
    let digits: String = raw[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_every_acknowledged_update() {
    let dir = tempfile::tempdir().unwrap();
    let (data, restored) = (dir.path().join("a"), dir.path().join("restored"));
    let node = Gossipd::start(&Spec::new(&data)).unwrap_or_else(|e| panic!("{e}"));
    let addr = node.addr();

    // Mail waiting for an offline recipient when the backup is taken.
    let carol_key = Keypair::generate();
    let (carol, _) = GossipClient::connect(&addr, carol_key.clone())
        .await
        .unwrap();
    let carol_uid = carol
        .register(|u| u.nick_name = "carol".into())
        .await
        .unwrap();
    drop(carol);
    let (dave, _) = GossipClient::connect(&addr, Keypair::generate())
        .await
        .unwrap();
    dave.register(|u| u.nick_name = "dave".into())
        .await
        .unwrap();
    let mail = dave
        .send_relayed(carol_uid, b"kept for carol")
        .await
        .unwrap();

    // Writers: each acknowledged status (writer, uid, generation, when acknowledged).
    type Acked = Arc<Mutex<Vec<(usize, UserId, u64, Instant)>>>;
    let acked: Acked = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in 0..WRITERS {
        let (acked, stop, addr) = (Arc::clone(&acked), Arc::clone(&stop), addr.clone());
        writers.push(tokio::spawn(async move {
            let (c, _e) = GossipClient::connect(&addr, Keypair::generate())
                .await
                .unwrap();
            let uid = c.register(|u| u.nick_name = format!("w{i}")).await.unwrap();
            c.add_contacts(&[carol_uid]).await.unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                c.set_status("online", Some(&format!("w{i}-{n}")))
                    .await
                    .unwrap();
                acked.lock().unwrap().push((i, uid, n, Instant::now()));
            }
            n
        }));
    }
    // Load first, then the backup while it goes on.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 200 {
        assert!(Instant::now() < deadline, "the writers do not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let archive = dir.path().join("backup.tar");
    let began = Instant::now();
    let (socket, out) = (data.join("admin.sock"), archive.clone());
    let backup = tokio::task::spawn_blocking(move || {
        Command::new(bin_path("prodserver"))
            .arg("--socket")
            .arg(&socket)
            .args(["backup", "--include-key"])
            .arg(&out)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let took = began.elapsed();
    let stdout = String::from_utf8_lossy(&backup.stdout);
    let stderr = String::from_utf8_lossy(&backup.stderr);
    assert!(backup.status.success(), "backup failed: {stderr}");
    assert!(
        stderr.contains("private key"),
        "the key is not warned about: {stderr}"
    );
    assert!(stdout.contains("gossipd --restore"), "{stdout}");
    // Some writes went on while the backup ran.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    // The writers went on around the backup (it takes milliseconds, so some runs see no
    // acknowledgement inside it; the count is printed).
    let ended = began + took;
    let during = acked
        .iter()
        .filter(|a| a.3 >= began && a.3 <= ended)
        .count();
    assert!(
        acked.iter().any(|a| a.3 > ended),
        "no write was acknowledged after the backup: the server stopped serving"
    );

    // What every writer had acknowledged before the backup began.
    let mut must: HashMap<usize, (UserId, u64)> = HashMap::new();
    for (i, uid, n, at) in &acked {
        if *at < began {
            let e = must.entry(*i).or_insert((*uid, 0));
            e.1 = e.1.max(*n);
        }
    }
    assert_eq!(must.len(), WRITERS);

    let restore = gossipd_restore(&archive, &restored);
    let said = String::from_utf8_lossy(&restore.stdout);
    assert!(
        restore.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&restore.stderr)
    );
    assert!(said.contains("every signature verified"), "{said}");
    assert_eq!(
        std::fs::read(restored.join("server.key")).unwrap(),
        std::fs::read(data.join("server.key")).unwrap(),
        "the private key asked for is restored"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(restored.join("server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "server.key readable by others: {mode:o}");
    }
    // A second restore into the same directory is refused.
    let again = gossipd_restore(&archive, &restored);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    drop(node);
    let back = Gossipd::start(&Spec::new(&restored)).unwrap_or_else(|e| panic!("{e}"));
    for (i, (uid, n)) in &must {
        let user = back
            .admin(&AdminRequest::User { uid: uid.0 })
            .unwrap_or_else(|e| panic!("writer {i}'s user {uid} is not restored: {e}"));
        assert_eq!(user["signature_valid"], true);
        assert_eq!(
            user["contact_list"],
            serde_json::json!([carol_uid.0]),
            "writer {i}'s contacts"
        );
        let raw = user["record"].as_str().unwrap();
        let got = generation(raw, *i).unwrap_or_else(|| panic!("no status in {raw}"));
        assert!(
            got >= *n,
            "writer {i}: status {n} was acknowledged before the backup, the restored node has {got}"
        );
    }
    // Carol logs in at the restored node and gets the mail that waited for her.
    let (carol, mut events) = GossipClient::connect(&back.addr(), carol_key)
        .await
        .unwrap();
    carol.login(carol_uid).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Relayed { message, .. } = events.next().await.expect("carol's session") {
                if message.id == mail {
                    return;
                }
            }
        }
    })
    .await
    .expect("the waiting message is in the restored mailbox");
    eprintln!(
        "backup: {} updates acknowledged, {during} of them while `prodserver backup` ran ({took:?}); restored: {}",
        acked.len(),
        said.trim()
    );
}
