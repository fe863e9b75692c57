//! Rogue peers: a scripted attacker with nothing but sockets (and, where the attack needs one,
//! an identity key of its own, which `federation = "open"` lets anyone make) drives real nodes
//! on loopback. Each attack must be refused, and afterwards the honest nodes' server lists,
//! links and tree must be what they were, and registration must still work across them.

use std::time::Duration;

use gossip_client::{ClientError, GossipClient};
use gossip_common::message as m;
use gossip_common::{Body, Domain, Keypair};
use gossip_server::{Config, RunningNode};
use gossip_tests::scripted::{attach, frame, read_frames};
use gossip_tests::wait_for;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn config(dir: &std::path::Path, peer: Option<u16>) -> Config {
    let mut c = Config::for_tests(dir, 0);
    if let Some(p) = peer {
        c.peers = vec![("127.0.0.1".into(), p)];
    }
    c.probe.interval = Duration::from_millis(20);
    c.probe.dead_after = Duration::from_millis(1000);
    c.reprobe = Duration::from_millis(250);
    c
}

fn id(n: &RunningNode) -> String {
    format!("127.0.0.1:{}", n.base_port())
}

/// Two honest nodes, linked, each knowing the other's key.
async fn pair() -> (tempfile::TempDir, RunningNode, RunningNode) {
    let dir = tempfile::tempdir().unwrap();
    let a = gossip_server::start(config(&dir.path().join("a"), None))
        .await
        .unwrap();
    let b = gossip_server::start(config(&dir.path().join("b"), Some(a.base_port())))
        .await
        .unwrap();
    wait_for("a and b to link", Duration::from_secs(20), || {
        let (sa, sb) = (a.node.federation.status(), b.node.federation.status());
        (sa.links.contains(&id(&b)) && sb.links.contains(&id(&a)) && !sa.tree.is_empty())
            .then_some(())
    })
    .await;
    (dir, a, b)
}

/// A registration on `a` reaches `b`: the federation still works end to end.
async fn registration_crosses(a: &RunningNode, b: &RunningNode) {
    let (client, _events) =
        GossipClient::connect(&a.client_addr().to_string(), Keypair::generate())
            .await
            .unwrap();
    let uid = client
        .register(|u| u.nick_name = "after-the-attack".into())
        .await
        .unwrap();
    wait_for(
        "the new user at the other node",
        Duration::from_secs(10),
        || b.node.store.contains_user(uid).then_some(()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_on_either_port_gets_a_clear_refusal() {
    let (_dir, a, _b) = pair().await;
    for (port, hello) in [
        (
            a.base_port(),
            "<register><publickey>00</publickey></register>\n",
        ),
        (
            a.base_port() + 1,
            "<serverID><host>127.0.0.1</host><port>9</port></serverID>\n",
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(hello.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer))
            .await
            .expect("closed after the refusal")
            .unwrap();
        assert!(
            answer.starts_with("<error") && answer.contains("only encrypted connections"),
            "port {port}: {answer}"
        );
    }
    // Counted once the refused handshake returns, which may be just after the peer saw the
    // connection close.
    wait_for("both refusals counted", Duration::from_secs(5), || {
        (a.node.metrics.handshakes_failed.get() >= 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refuses_a_server_whose_key_changed() {
    let dir = tempfile::tempdir().unwrap();
    let a = gossip_server::start(config(dir.path(), None))
        .await
        .unwrap();
    let addr = a.client_addr().to_string();
    let (c, _) = GossipClient::connect(&addr, Keypair::generate())
        .await
        .unwrap();
    assert_eq!(c.server_key(), a.node.keys.public());
    let impostor = Keypair::generate().public();
    match GossipClient::connect_pinned(&addr, Keypair::generate(), Some(impostor)).await {
        Err(ClientError::ServerKeyChanged {
            pinned, presented, ..
        }) => {
            assert_eq!((pinned, presented), (impostor, a.node.keys.public()));
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a server with another key than the pinned one was accepted"),
    }
    // The key survives a restart (it is the server's identity, kept in its data dir).
    let before = a.node.keys.public();
    a.stop().await.unwrap();
    let a = gossip_server::start(config(dir.path(), None))
        .await
        .unwrap();
    assert_eq!(a.node.keys.public(), before);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("server.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_take_a_known_servers_name() {
    let (_dir, a, b) = pair().await;
    let before = a.node.federation.status();
    let mallory = Keypair::generate();
    let (mut lines, _wr) = attach(a.base_port() + 1, &mallory, ("127.0.0.1", b.base_port())).await;
    let mut said = String::new();
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .expect("the node answers and closes")
    {
        said.push_str(&line);
    }
    assert!(said.contains("bound to another key"), "{said}");
    assert_eq!(a.node.metrics.refused_keys.get(), 1);
    let after = a.node.federation.status();
    assert_eq!((after.servers, after.links), (before.servers, before.links));
    registration_crosses(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_rows_and_removals_change_nothing() {
    let (_dir, a, b) = pair().await;
    let b_id = id(&b);
    let b_key = b.node.keys.public().to_string();
    let mallory = Keypair::generate();
    // An open federation: the attacker joins under a name of its own.
    let (mut lines, mut wr) = attach(a.base_port() + 1, &mallory, ("192.0.2.66", 4000)).await;
    let row = |key: &str, sig: String| m::UpdateRtts {
        host: "127.0.0.1".into(),
        port: b.base_port(),
        seq: u64::MAX,
        rtts: vec![m::RttEntry {
            host: "127.0.0.1".into(),
            port: a.base_port(),
            ms: None,
        }],
        key: Some(key.into()),
        sig: Some(sig),
    };
    let forged_sig = mallory.sign(Domain::ServerControl, b"anything").to_string();
    let attacks = [
        // B's row, frozen at the largest seq and marking A dead: signed by the attacker...
        frame(row(&mallory.public().to_string(), forged_sig.clone())),
        // ...or claiming B's key with a signature B never made.
        frame(row(&b_key, forged_sig.clone())),
        // B "deleted": unsigned, and signed by the wrong key.
        frame(m::DeleteServer {
            host: "127.0.0.1".into(),
            port: b.base_port(),
            key: None,
            seq: None,
            sig: None,
        }),
        frame(m::DeleteServer {
            host: "127.0.0.1".into(),
            port: b.base_port(),
            key: Some(b_key.clone()),
            seq: Some(u64::MAX),
            sig: Some(forged_sig),
        }),
        frame(m::Ping {}),
    ];
    for f in attacks {
        wr.write_all(&f).await.unwrap();
    }
    wr.flush().await.unwrap();
    // The node handles a link's messages in order: its pong means it has seen them all.
    loop {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .expect("the node answers the ping")
            .unwrap()
            .expect("the link stays open");
        if line.contains("<pong") {
            break;
        }
    }
    assert_eq!(a.node.metrics.refused_rows.get(), 2);
    let status = a.node.federation.status();
    assert!(status.servers.contains(&b_id), "{status:?}");
    assert!(status.links.contains(&b_id), "{status:?}");
    // B's row at A is still B's own: its seq is not frozen and B's later rows are taken.
    let b_row_seq = || {
        a.node
            .federation
            .matrix()
            .into_iter()
            .find(|(from, _)| *from == b_id)
            .map(|(_, cells)| cells)
    };
    assert!(
        b_row_seq().is_some_and(|cells| cells.iter().all(|(to, ms)| *to != id(&a) || ms.is_some()))
    );
    drop((lines, wr));
    registration_crosses(&a, &b).await;
    registration_crosses(&b, &a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_server_itself_can_remove_it_everywhere() {
    let (_dir, a, b) = pair().await;
    let a_id = id(&a);
    // B's admin deletes A: forgotten at B only; A keeps B.
    let status = admin(
        &b,
        &format!(r#"{{"cmd":"delete-server","server":"{a_id}"}}"#),
    )
    .await;
    assert!(status.contains("\"deleted\":true"), "{status}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.node.federation.status().servers.contains(&id(&b)));
    // A leaves by its own signed statement: B (re-adding it first) forgets it for good.
    admin(&b, &format!(r#"{{"cmd":"add-server","server":"{a_id}"}}"#)).await;
    wait_for("a and b to link again", Duration::from_secs(20), || {
        b.node
            .federation
            .status()
            .links
            .contains(&a_id)
            .then_some(())
    })
    .await;
    let left = admin(
        &a,
        &format!(r#"{{"cmd":"delete-server","server":"{a_id}"}}"#),
    )
    .await;
    assert!(left.contains("\"left\":true"), "{left}");
    wait_for("b to forget a", Duration::from_secs(10), || {
        (!b.node.federation.status().servers.contains(&a_id)).then_some(())
    })
    .await;
}

/// One admin request on a node's admin socket; the raw JSON answer.
async fn admin(node: &RunningNode, request: &str) -> String {
    let mut s = tokio::net::UnixStream::connect(&node.node.config.admin_socket)
        .await
        .unwrap();
    s.write_all(format!("{request}\n").as_bytes())
        .await
        .unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).await.unwrap();
    assert!(line.contains("\"ok\":true"), "{request}: {line}");
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_cannot_stop_registrations() {
    let dir = tempfile::tempdir().unwrap();
    let a = gossip_server::start(config(dir.path(), None))
        .await
        .unwrap();
    // Linked, and never answers a lock request (nor anything else).
    let (_lines, _wr) = attach(
        a.base_port() + 1,
        &Keypair::generate(),
        ("192.0.2.66", 4000),
    )
    .await;
    wait_for("the silent peer's link", Duration::from_secs(5), || {
        (!a.node.federation.status().links.is_empty()).then_some(())
    })
    .await;
    let (client, _events) =
        GossipClient::connect(&a.client_addr().to_string(), Keypair::generate())
            .await
            .unwrap();
    let t0 = std::time::Instant::now();
    let uid = client
        .register(|u| u.nick_name = "despite-silence".into())
        .await
        .expect("registration granted after the silent peer's timeout");
    assert!(a.node.store.contains_user(uid));
    // It waited for the peer (the lock request reached it), then went ahead.
    assert!(t0.elapsed() >= Duration::from_secs(4), "{:?}", t0.elapsed());
}

/// A `lockUID` for `holder`, signed by `key` now (as a server signs its own).
fn signed_lock(uid: u64, holder: String, key: &Keypair) -> m::LockUid {
    let issued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let uid = gossip_common::UserId(uid);
    let sig = key.sign(
        Domain::ServerControl,
        &m::lock_bytes(uid, &holder, 900, issued),
    );
    m::LockUid {
        uid,
        holder,
        expires_s: 900,
        issued: Some(issued),
        key: Some(key.public().to_string()),
        sig: Some(sig.to_string()),
    }
}

/// A member floods lock requests: half in its own name (held to its key's rate and share),
/// half in the name of the server it floods, the squat that once took every honest server's
/// share for 900 s. Registrations there still succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_flood_is_held_to_its_senders_rate_and_cannot_squat_in_others_names() {
    let dir = tempfile::tempdir().unwrap();
    let a = gossip_server::start(config(dir.path(), None))
        .await
        .unwrap();
    let rogue = Keypair::generate();
    let (mut lines, mut wr) = attach(a.base_port() + 1, &rogue, ("192.0.2.66", 4000)).await;
    const FLOOD: u64 = 400;
    let mut burst = Vec::new();
    for i in 0..FLOOD {
        burst.extend(frame(signed_lock(
            1_000_000 + i,
            format!("192.0.2.66:4000/{i}"),
            &rogue,
        )));
        burst.extend(frame(signed_lock(
            2_000_000 + i,
            format!("{}/{i}", id(&a)),
            &rogue,
        )));
    }
    wr.write_all(&burst).await.unwrap();
    wr.flush().await.unwrap();
    let mut answers = 0;
    let got = read_frames(&mut lines, |l| {
        answers += usize::from(l.contains("<lockResult"));
        answers == 2 * FLOOD as usize
    })
    .await;
    let granted = |prefix: &str| {
        got.iter()
            .filter(|l| l.contains("<granted>1</granted>") && l.contains(prefix))
            .count()
    };
    assert_eq!(answers, 2 * FLOOD as usize, "every request is answered");
    // A burst of 100, plus what the rate refilled while they were read; never all.
    let own = granted("<holder>192.0.2.66:4000/");
    assert!((100..=160).contains(&own), "granted {own} of {FLOOD}");
    let squatted = granted(&format!("<holder>{}/", id(&a)));
    assert_eq!(squatted, 0, "locks taken in the name of the server flooded");
    println!("lock flood: {own} of {FLOOD} own-name requests granted, {squatted} of {FLOOD} in the victim's name");
    // The flood took none of the honest registrations' share.
    let (client, _e) = GossipClient::connect(&a.client_addr().to_string(), Keypair::generate())
        .await
        .unwrap();
    client
        .register(|u| u.nick_name = "honest".into())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_register_without_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), None);
    cfg.registrations_per_minute = 5.0;
    let a = gossip_server::start(cfg).await.unwrap();
    let mut raw = gossip_tests::RawConn::connect(a.client_addr()).await;
    let key = Keypair::generate();
    let mut refused = None;
    for i in 0..6 {
        let id = raw
            .send(m::Register {
                publickey: key.public(),
            })
            .await;
        let last = raw.until_final(id).await.pop().expect("an answer");
        if let Body::Error(e) = last.body {
            refused = Some((i, e));
            break;
        }
    }
    let (i, e) = refused.expect("the sixth registration in a minute is refused");
    assert_eq!(i, 5);
    assert_eq!(e.code, gossip_common::ErrorCode::NotAllowed);
    assert!(e.text.contains("too many registrations"), "{}", e.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_reconnects_in_a_loop_is_held_to_the_link_rate() {
    let dir = tempfile::tempdir().unwrap();
    let a = gossip_server::start(config(dir.path(), None))
        .await
        .unwrap();
    let key = Keypair::generate();
    let mut refused_at = None;
    for i in 0..80 {
        let (mut lines, _wr) = attach(a.base_port() + 1, &key, ("192.0.2.66", 4000)).await;
        // After its own `serverID`, the node sends either its server list (the link is up) or
        // an error (refused).
        let got = read_frames(&mut lines, |l| {
            l.contains("<serverlist") || l.contains("<error")
        })
        .await;
        if got.iter().any(|l| l.contains("too many links")) {
            refused_at = Some(i);
            break;
        }
    }
    // A burst of 60 link-ups, then two a second (the loop takes a few ms per attempt).
    let i = refused_at.expect("refused within 80 link-ups");
    assert!((60..=66).contains(&i), "refused at {i}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_is_cut_at_once_and_stays_out_and_a_pinned_name_cannot_be_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let a = gossip_server::start(config(dir.path(), None))
        .await
        .unwrap();
    let mallory = Keypair::generate();
    let (mut lines, _wr) = attach(a.base_port() + 1, &mallory, ("192.0.2.66", 4000)).await;
    read_frames(&mut lines, |l| l.contains("<serverlist")).await;
    wait_for("the link", Duration::from_secs(5), || {
        (!a.node.federation.status().links.is_empty()).then_some(())
    })
    .await;
    let answer = admin(
        &a,
        &format!(r#"{{"cmd":"blacklist-add","net":"{}"}}"#, mallory.public()),
    )
    .await;
    assert!(answer.contains("\"links_closed\":1"), "{answer}");
    // The open link ends...
    let rest = read_frames(&mut lines, |_| false).await;
    assert!(rest.len() < 10, "{rest:?}");
    wait_for("the link to be gone", Duration::from_secs(5), || {
        a.node.federation.status().links.is_empty().then_some(())
    })
    .await;
    // ...and a new one from that key is refused, from any address and under any name.
    let (mut lines, _wr) = attach(a.base_port() + 1, &mallory, ("192.0.2.67", 5000)).await;
    let said = read_frames(&mut lines, |l| {
        l.contains("<error") || l.contains("<serverlist")
    })
    .await;
    assert!(said.iter().any(|l| l.contains("refused here")), "{said:?}");
    // An admin pins a name before its server ever shows up: nobody else can claim it.
    let real = Keypair::generate();
    admin(
        &a,
        &format!(
            r#"{{"cmd":"trust","server":"192.0.2.70:6000","key":"{}"}}"#,
            real.public()
        ),
    )
    .await;
    let (mut lines, _wr) = attach(
        a.base_port() + 1,
        &Keypair::generate(),
        ("192.0.2.70", 6000),
    )
    .await;
    let said = read_frames(&mut lines, |l| {
        l.contains("<error") || l.contains("<serverlist")
    })
    .await;
    assert!(
        said.iter().any(|l| l.contains("bound to another key")),
        "{said:?}"
    );
    let (mut lines, _wr) = attach(a.base_port() + 1, &real, ("192.0.2.70", 6000)).await;
    let said = read_frames(&mut lines, |l| {
        l.contains("<error") || l.contains("<serverlist")
    })
    .await;
    assert!(said.iter().any(|l| l.contains("<serverlist")), "{said:?}");
}

/// TCP sockets some process holds open whose local port is `port` (the server's side of its
/// connections: listeners and orphaned sockets a process let go of are not counted).
fn held_sockets(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = cols
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            let listening = cols.get(3) == Some(&"0A");
            let orphaned = cols.get(9) == Some(&"0");
            local_port == Some(port) && !listening && !orphaned
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cut_for_not_reading_lose_their_sockets_and_their_places() {
    const N: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path(), 0);
    config.max_clients = N;
    config.idle_timeout = Duration::from_secs(1);
    // This test is about clients that do not read, not about floods: no inbound budget.
    config.client_inbound = gossip_server::budget::InboundRate::per_second(1e9, 1e9);
    let node = gossip_server::start(config).await.unwrap();
    let addr = node.client_addr();
    // N clients that send pings and never read a pong: the server's queue to each fills, its
    // reply waits out the idle timeout, and the session is cut.
    let mut floods = Vec::new();
    for _ in 0..N {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut s, _) = gossip_common::secure::connect(
            stream,
            gossip_common::secure::Purpose::Client,
            &gossip_common::secure::Identity::anonymous(),
        )
        .await
        .unwrap();
        let ping = gossip_common::codec::encode_frame(m::Ping {});
        let pings = vec![ping; 512];
        floods.push(tokio::spawn(async move {
            // Writes until the server stops reading (or closes); the socket is kept open and
            // never read, as a stalled client's would be.
            let _ = tokio::time::timeout(Duration::from_secs(20), async {
                while gossip_common::codec::write_frames(&mut s, &pings)
                    .await
                    .is_ok()
                {}
            })
            .await;
            s
        }));
    }
    wait_for("every session open", Duration::from_secs(10), || {
        (held_sockets(addr.port()) == N).then_some(())
    })
    .await;
    // The server must let go of each cut session's socket, bounded, though the client never
    // reads what is left in it.
    wait_for(
        "the cut sessions' sockets closed on the server's side",
        Duration::from_secs(20),
        || (held_sockets(addr.port()) == 0).then_some(()),
    )
    .await;
    // The places are back: a new client is admitted and served.
    let mut fresh = gossip_tests::RawConn::connect(addr).await;
    let id = fresh.send(m::Ping {}).await;
    let replies = fresh.until_final(id).await;
    assert!(matches!(
        replies.last().map(|m| &m.body),
        Some(Body::Pong(_))
    ));
    for f in floods {
        drop(f.await.unwrap());
    }
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_names_with_control_characters_are_refused_and_never_listed() {
    let (_dir, a, b) = pair().await;
    let mallory = Keypair::generate();
    let (_lines, mut wr) = attach(a.base_port() + 1, &mallory, ("192.0.2.67", 4000)).await;
    for host in [
        "evil\u{1b}]0;owned\u{7}.example",
        "nul\0.example",
        "two\nlines.example",
        "<b>markup</b>",
    ] {
        let add = m::AddServer {
            host: host.into(),
            port: 4001,
            key: None,
        };
        wr.write_all(&frame(add)).await.unwrap();
    }
    // An honest name after them: once it is learned, the others were read.
    let honest = m::AddServer {
        host: "honest.example".into(),
        port: 4002,
        key: None,
    };
    wr.write_all(&frame(honest)).await.unwrap();
    wr.flush().await.unwrap();
    for (node, which) in [(&a, "a"), (&b, "the neighbour")] {
        let servers = wait_for(
            &format!("{which} to learn the honest name"),
            Duration::from_secs(10),
            || {
                let s = node.node.federation.status().servers;
                s.iter().any(|x| x == "honest.example:4002").then_some(s)
            },
        )
        .await;
        assert!(
            servers.iter().all(|s| gossip_common::name::is_host(
                s.rsplit_once(':').map_or(s.as_str(), |(h, _)| h)
            )),
            "{which} lists a name that is not a host: {servers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stranger_key_introduces_a_handful_of_servers_not_hundreds() {
    let (_dir, a, b) = pair().await;
    let before = (
        a.node.federation.status().servers.len(),
        b.node.federation.status().servers.len(),
    );
    let mallory = Keypair::generate();
    let (_lines, mut wr) = attach(a.base_port() + 1, &mallory, ("192.0.2.68", 4000)).await;
    const JUNK: usize = 301;
    for i in 0..JUNK {
        let add = m::AddServer {
            host: format!("junk{i}.example"),
            port: 4001,
            key: None,
        };
        wr.write_all(&frame(add)).await.unwrap();
    }
    wr.flush().await.unwrap();
    // A bound of 16 unproven names per introducing key: the rest are refused and counted.
    wait_for("the junk refused", Duration::from_secs(10), || {
        (a.node.federation.refused_introductions() >= (JUNK - 16) as u64).then_some(())
    })
    .await;
    let grown = a.node.federation.status().servers.len() - before.0;
    // Mallory's own name (it linked, so it showed itself) and 16 of its junk names.
    assert!(grown <= 17, "a learned {grown} servers from one key");
    assert!(
        grown >= 16,
        "a learned only {grown}: the bound is 16 per key"
    );
    // The neighbour learns them from a, whose key is held to the same bound: it gets what a
    // forwards (at least 16 names), and no more.
    let grown_b = wait_for(
        "the neighbour to learn a's names",
        Duration::from_secs(10),
        || {
            let grown = b.node.federation.status().servers.len() - before.1;
            (grown >= 16).then_some(grown)
        },
    )
    .await;
    assert!(grown_b <= 17, "the neighbour learned {grown_b} servers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_frames_is_cut_and_the_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let node = gossip_server::start(Config::for_tests(dir.path(), 0))
        .await
        .unwrap();
    let addr = node.client_addr();
    let mut honest = gossip_tests::RawConn::connect(addr).await;
    let mut flooder = gossip_tests::RawConn::connect(addr).await;
    // 20,000 pongs (what nobody asked for) in one go: past what a connection may send before
    // it logs in (4 frames a second, a burst of 40), and past the logged-in 200 a second.
    let pong = frame(m::Pong {});
    let flood: Vec<u8> = pong
        .iter()
        .copied()
        .cycle()
        .take(pong.len() * 20_000)
        .collect();
    // The server stops reading once it cuts the flooder, so the write may fail.
    let _ = flooder.try_send_raw(&flood).await;
    wait_for("the flooder cut", Duration::from_secs(10), || {
        (node.node.metrics.inbound_cut.get() == 1).then_some(())
    })
    .await;
    // It is told why, unless its unread flood made the close a reset that discarded it.
    let mut refusal = None;
    while let Some(msg) = flooder.recv().await {
        if let Body::Error(e) = msg.body {
            refusal = Some(e);
        }
    }
    if let Some(e) = refusal {
        assert_eq!(e.code, gossip_common::ErrorCode::NotAllowed);
        assert!(e.text.contains("frames a second"), "{}", e.text);
    }
    // The other connection is served as before.
    let id = honest.send(m::Ping {}).await;
    let replies = honest.until_final(id).await;
    assert!(matches!(
        replies.last().map(|m| &m.body),
        Some(Body::Pong(_))
    ));
    node.stop().await.unwrap();
}
