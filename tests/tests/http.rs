//! The opt-in HTTP listener against a real node on loopback: `/metrics` in the Prometheus text
//! format, `/healthz`, `/readyz`, a 404 for anything else, and the listener gone with the node.

use std::time::Duration;

use gossip_server::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` with the extra header lines `extra` over a fresh connection (HTTP/1.1,
/// `Connection: close`): the status line, the headers (lower-cased names) and the raw body.
async fn get_bytes(
    addr: std::net::SocketAddr,
    path: &str,
    extra: &str,
) -> (String, Vec<(String, String)>, Vec<u8>) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut raw))
        .await
        .expect("an answer in time")
        .unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let head = String::from_utf8(raw[..split].to_vec()).expect("UTF-8 headers");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, raw[split + 4..].to_vec())
}

/// `GET path`: the status line, the headers and the body as text.
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, Vec<(String, String)>, String) {
    let (status, headers, body) = get_bytes(addr, path, "").await;
    (status, headers, String::from_utf8(body).expect("UTF-8"))
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_line = std::str::from_utf8(&raw[..eol]).unwrap();
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::for_tests(dir.path(), 0);
    c.http = Some("127.0.0.1:0".parse().unwrap());
    let node = gossip_server::start(c).await.unwrap();
    let addr = node.http_addr().expect("the listener is bound");

    let (status, headers, body) = get(addr, "/metrics").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    for series in [
        "# TYPE gossip_users gauge",
        "# TYPE gossip_connections_total counter",
        "gossip_repair_checks_total 0",
    ] {
        assert!(body.contains(series), "no {series:?} in:\n{body}");
    }
    // The same exposition as the admin socket's.
    assert_eq!(
        body.lines().filter(|l| l.starts_with("# TYPE")).count(),
        node.node
            .admin_metrics()
            .lines()
            .filter(|l| l.starts_with("# TYPE"))
            .count()
    );

    // Gzip when asked for, as Prometheus does; the same exposition inside.
    let (_, headers, mut body) = get_bytes(addr, "/metrics", "Accept-Encoding: gzip\r\n").await;
    assert_eq!(header(&headers, "content-encoding"), Some("gzip"));
    if header(&headers, "transfer-encoding") == Some("chunked") {
        body = dechunk(&body);
    }
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(body.as_slice()),
        &mut text,
    )
    .expect("gzip");
    assert!(
        text.contains("# TYPE gossip_connections_total counter"),
        "{text}"
    );

    let (status, _, body) = get(addr, "/healthz").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(body, "ok\n");

    let (status, headers, body) = get(addr, "/readyz").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["users"], 0);

    let (status, _, _) = get(addr, "/nothing-here").await;
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");

    node.stop().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener closes with the node"
    );
}

/// The live map over three in-process nodes (n0 – n1 – n2 by their peers): the page is one
/// self-contained document, and `/map.json` shows every server, the two tree edges with their
/// weights and this node's link, then n2 dead once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_map_shows_the_federation_and_a_death() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let config = |i: usize, peer: Option<u16>| {
        let mut c = Config::for_tests(dirs[i].path(), 0);
        c.peers = peer
            .map(|p| ("127.0.0.1".to_owned(), p))
            .into_iter()
            .collect();
        gossip_tests::fast_probing(&mut c, Duration::from_millis(1000));
        c
    };
    let mut c0 = config(0, None);
    c0.http = Some("127.0.0.1:0".parse().unwrap());
    let n0 = gossip_server::start(c0).await.unwrap();
    let n1 = gossip_server::start(config(1, Some(n0.base_port())))
        .await
        .unwrap();
    let n2 = gossip_server::start(config(2, Some(n1.base_port())))
        .await
        .unwrap();
    let http = n0.http_addr().unwrap();
    let ids: Vec<String> = [&n0, &n1, &n2]
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.base_port()))
        .collect();

    let (status, headers, page) = get(http, "/").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(header(&headers, "content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.contains("map.json") && page.contains("<svg"));
    let outside: Vec<&str> = page
        .match_indices("http")
        .map(|(at, _)| &page[at..(at + 40).min(page.len())])
        .filter(|u| !u.starts_with("http://www.w3.org/2000/svg"))
        .collect();
    assert!(
        outside.is_empty(),
        "the page loads something from outside: {outside:?}"
    );
    assert!(
        !page.contains("<script src") && !page.contains("<link "),
        "one document"
    );

    let map = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap();
    let state_of = |m: &serde_json::Value, id: &str| {
        m["federation"]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .map(|s| s["state"].as_str().unwrap().to_owned())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let whole = loop {
        let (_, headers, body) = get(http, "/map.json").await;
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
        let m = map(&body);
        let tree = m["federation"]["tree"].as_array().unwrap().len();
        if tree == 2
            && ids[1..]
                .iter()
                .all(|id| state_of(&m, id).as_deref() == Some("alive"))
        {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "no whole map: {m:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(whole["federation"]["me"], ids[0]);
    assert_eq!(state_of(&whole, &ids[0]).as_deref(), Some("self"));
    for e in whole["federation"]["tree"].as_array().unwrap() {
        assert!(
            e["rtt_ms"].as_f64().unwrap() > 0.0,
            "a tree edge without its weight: {e}"
        );
    }
    assert!(
        whole["links"].as_u64().unwrap() >= 1,
        "n0 is linked to its tree neighbour"
    );

    n2.stop().await.unwrap();
    let t0 = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, _, body) = get(http, "/map.json").await;
        let m = map(&body);
        if state_of(&m, &ids[2]).as_deref() == Some("dead") {
            assert_eq!(
                m["federation"]["tree"].as_array().unwrap().len(),
                1,
                "{m:#}"
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "n2 never shown dead: {m:#}"
        );
    }
    eprintln!("map: n2 shown dead {:?} after it stopped", t0.elapsed());
    n1.stop().await.unwrap();
    n0.stop().await.unwrap();
}

/// The value of the sample `series` (name and labels, as printed) in `text`; 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Real work on a real node shows in its histograms: a handshake, a login, a push written to
/// a watcher, a relayed message acknowledged and delivered, the datafiles' `fdatasync`s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_histograms_observe_a_real_sessions_work() {
    use gossip_client::{Event, GossipClient};
    use gossip_common::Keypair;
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::for_tests(dir.path(), 0);
    c.http = Some("127.0.0.1:0".parse().unwrap());
    let node = gossip_server::start(c).await.unwrap();
    let (http, addr) = (node.http_addr().unwrap(), node.client_addr().to_string());

    let (alice_key, bob_key) = (Keypair::generate(), Keypair::generate());
    let (alice, _) = GossipClient::connect(&addr, alice_key.clone())
        .await
        .unwrap();
    let alice_uid = alice
        .register(|u| u.nick_name = "alice".into())
        .await
        .unwrap();
    let (bob, mut bob_events) = GossipClient::connect(&addr, bob_key).await.unwrap();
    let bob_uid = bob.register(|u| u.nick_name = "bob".into()).await.unwrap();
    bob.add_contacts(&[alice_uid]).await.unwrap();
    drop(alice);
    // A login by challenge (registration logs in without one).
    let (alice, mut alice_events) = GossipClient::connect(&addr, alice_key).await.unwrap();
    alice.login(alice_uid).await.unwrap();
    alice.go_online("away", None).await.unwrap();
    let id = alice.send_relayed(bob_uid, b"hello").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        let (mut pushed, mut got) = (false, false);
        while !(pushed && got) {
            match bob_events.next().await.expect("bob's session") {
                Event::Presence(r) if r.user_id == alice_uid && r.status == "away" => pushed = true,
                Event::Relayed { message, .. } if message.id == id => got = true,
                _ => {}
            }
        }
    })
    .await
    .expect("bob gets the push and the message");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Delivered { id: d, .. } =
                alice_events.next().await.expect("alice's session")
            {
                if d == id {
                    return;
                }
            }
        }
    })
    .await
    .expect("alice hears of the delivery");

    let every = [
        "gossip_handshake_seconds_count{side=\"client\"}",
        "gossip_login_seconds_count",
        "gossip_push_seconds_count",
        "gossip_relay_ack_seconds_count",
        "gossip_relay_delivery_seconds_count",
        "gossip_fsync_seconds_count{datafile=\"users\"}",
        "gossip_fsync_seconds_count{datafile=\"contactlists\"}",
        "gossip_fsync_seconds_count{datafile=\"mailbox\"}",
        "gossip_fsync_seconds_count{datafile=\"wills\"}",
    ];
    // The will's and the mailbox's writers gather a few milliseconds before their fdatasync.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (_, _, text) = get(http, "/metrics").await;
        let missing: Vec<_> = every.iter().filter(|s| sample(&text, s) < 1.0).collect();
        if missing.is_empty() {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing:?} observed nothing in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Three connections were handshaken, one login was by challenge, and the push went to
    // one watcher; every observation lands in a bucket up to +Inf.
    assert_eq!(
        sample(&text, "gossip_handshake_seconds_count{side=\"client\"}"),
        3.0
    );
    assert_eq!(sample(&text, "gossip_login_seconds_count"), 1.0);
    assert_eq!(
        sample(&text, "gossip_push_seconds_bucket{le=\"+Inf\"}"),
        sample(&text, "gossip_push_seconds_count")
    );
    assert!(sample(&text, "gossip_push_seconds_sum") < 10.0);
    node.stop().await.unwrap();
}

#[test]
fn a_bad_http_address_says_what_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let f = gossip_server::config::FileConfig {
        data_dir: Some(dir.path().to_owned()),
        http: Some("localhost".into()),
        ..Default::default()
    };
    let e = Config::from_file_config(f).unwrap_err().to_string();
    assert!(e.contains("expected ADDR:PORT, e.g. 127.0.0.1:9100"), "{e}");
}
