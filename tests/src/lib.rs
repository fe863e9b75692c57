//! Helpers for Gossip's multi-process integration tests and the benchmark: locating the
//! workspace's binaries, ports that cannot collide ([`ports`]), real `gossipd` processes that keep
//! their logs as evidence when a test fails ([`gossipd`]), and waiting on conditions with a
//! deadline (never sleep-and-hope).

pub mod chaos;
pub mod gossipd;
pub mod ports;
pub mod relay;
pub mod scripted;
pub mod tmux;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Path of a binary built from this workspace (`gossipd`, `gossip`, `prodserver`,
/// `store-writer`), next to the test executable's `deps/` directory.
///
/// `cargo test` only builds the binaries of the package under test, so the other packages'
/// binaries are built here, once per test run, with the same cargo and profile.
pub fn bin_path(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let dir = profile_dir();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "gossip-server",
            "-p",
            "gossip-client",
            "-p",
            "prodserver",
            "--bins",
        ]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for the test binaries");
        assert!(status.success(), "building the workspace binaries failed");
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The profile directory of the running executable (`target/debug` or `target/release`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("target dir")
        .to_owned()
}

/// The cargo target directory (`target/`), where failed tests keep their logs.
pub fn target_dir() -> PathBuf {
    let profile = profile_dir();
    profile.parent().map(PathBuf::from).unwrap_or(profile)
}

/// Runs the `gossip` CLI with profile `home` and `args`; its stdout. Panics with its stderr if
/// it fails.
pub fn gossip_cli(home: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(bin_path("gossip"))
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .expect("run gossip");
    assert!(
        out.status.success(),
        "gossip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    wait_for_or_describe(what, timeout, check, String::new).await
}

/// Like [`wait_for`], but a timeout's panic also says what `describe` reports then (the state
/// a failure needs to be understood).
pub async fn wait_for_or_describe<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}{}",
            Some(describe())
                .filter(|d| !d.is_empty())
                .map_or(String::new(), |d| format!("; then:\n{d}"))
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

use futures::{SinkExt, StreamExt};
use gossip_common::secure::{self, SecureStream};
use gossip_common::{Body, Message, XmlFrameCodec};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Opens a server link to `port` (a node's P+1) as a scripted server would: the encryption
/// handshake with the identity `key`, and nothing else. Returns the stream and the node's key.
pub async fn server_link(
    port: u16,
    key: &gossip_common::Keypair,
) -> Result<(SecureStream<TcpStream>, gossip_common::PublicKey), secure::SecureError> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    secure::connect(
        stream,
        secure::Purpose::Federation,
        &secure::Identity::new(key),
    )
    .await
}

/// A raw protocol connection, for tests that must send what a well-behaved client never would.
pub struct RawConn {
    framed: Framed<SecureStream<TcpStream>, XmlFrameCodec>,
    next_id: u64,
    server_key: gossip_common::PublicKey,
}

impl RawConn {
    /// Connects to a server's client port (through the encryption handshake, as every client
    /// must).
    pub async fn connect(addr: std::net::SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        // As every client does: the handshake's last message and the first request are two
        // small writes in a row, which Nagle's algorithm would hold for a delayed ACK.
        stream.set_nodelay(true).expect("nodelay");
        let (secured, server_key) = secure::connect(
            stream,
            secure::Purpose::Client,
            &secure::Identity::anonymous(),
        )
        .await
        .expect("encryption handshake");
        RawConn {
            framed: Framed::new(secured, XmlFrameCodec::default()),
            next_id: 1,
            server_key,
        }
    }

    /// The identity key the server proved.
    pub fn server_key(&self) -> gossip_common::PublicKey {
        self.server_key
    }

    /// Sends a message with a fresh request id; returns the id.
    pub async fn send(&mut self, body: impl Into<Body>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let msg = Message::new(std::net::Ipv6Addr::LOCALHOST, body).with_id(id);
        self.framed.send(&msg).await.expect("send");
        id
    }

    /// Sends raw bytes (malformed input tests).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.framed
            .get_mut()
            .write_all(bytes)
            .await
            .expect("send raw");
        self.framed.get_mut().flush().await.expect("send raw");
    }

    /// Sends raw bytes, which the server may refuse to read to the end (a flood it cuts).
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.framed.get_mut().write_all(bytes).await?;
        self.framed.get_mut().flush().await
    }

    /// The next message (pings are answered and skipped), or `None` when the server closed.
    pub async fn recv(&mut self) -> Option<Message> {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), self.framed.next())
                .await
                .expect("no message within 10 s");
            let frame = next?.ok()?.expect("frame");
            let msg = Message::decode(&frame).expect("server sent a valid message");
            if let Body::Ping(_) = msg.body {
                let pong = Message::new(
                    std::net::Ipv6Addr::LOCALHOST,
                    gossip_common::message::Pong {},
                )
                .in_reply_to(msg.header.id);
                self.framed.send(&pong).await.expect("pong");
                continue;
            }
            return Some(msg);
        }
    }

    /// Receives until the reply to `id` that ends the request (`ok`, `error`, `challenge`,
    /// `userID`, `pong`), returning all messages answering `id`.
    pub async fn until_final(&mut self, id: u64) -> Vec<Message> {
        let mut out = Vec::new();
        loop {
            let msg = self.recv().await.expect("connection closed early");
            if msg.header.re != Some(id) {
                continue;
            }
            let done = msg.body.ends_request();
            out.push(msg);
            if done {
                return out;
            }
        }
    }
}

/// Fast RTT probing for in-process nodes: a packet every 20 ms, done after 3 replies, dead after
/// `dead_after` without one, a new round every 250 ms. The tests' tree settles in well under a
/// second and a death shows within `dead_after`.
pub fn fast_probing(c: &mut gossip_server::Config, dead_after: Duration) {
    c.probe = gossip_common::rtt::ProbeConfig {
        interval: Duration::from_millis(20),
        replies: 3,
        dead_after,
        source: None,
    };
    c.reprobe = Duration::from_millis(250);
}
