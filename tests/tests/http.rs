//! The opt-in HTTP listener against a real node on loopback: `/metrics` in the Prometheus text
//! format, `/healthz`, `/readyz`, a 404 for anything else, and the listener gone with the node.

use std::time::Duration;

use gossip_server::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` over a fresh connection (HTTP/1.1, `Connection: close`): the status line, the
/// headers (lower-cased names) and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, Vec<(String, String)>, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut raw))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
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
