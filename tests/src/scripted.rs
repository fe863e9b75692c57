//! A scripted server for the rogue tests: a link opened with a key of its own, on which a test
//! writes whatever frames it likes and reads what the node answers.

use std::time::Duration;

use gossip_common::message as m;
use gossip_common::{Body, Keypair, Message};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A scripted link's reading half, a line (frame) at a time.
pub type Lines = tokio::io::Lines<
    BufReader<tokio::io::ReadHalf<gossip_common::secure::SecureStream<tokio::net::TcpStream>>>,
>;

/// A scripted link's writing half.
pub type Writer = tokio::io::WriteHalf<gossip_common::secure::SecureStream<tokio::net::TcpStream>>;

/// `body` as one frame on the wire (XML and its newline).
pub fn frame(body: impl Into<Body>) -> Vec<u8> {
    let mut v = Message::new(std::net::Ipv6Addr::LOCALHOST, body)
        .to_xml()
        .into_bytes();
    v.push(b'\n');
    v
}

/// The attacker's link: handshake with its own key, `serverID` in `name`'s name; returns the
/// reader (lines) and writer.
pub async fn attach(port: u16, key: &Keypair, name: (&str, u16)) -> (Lines, Writer) {
    let (stream, _) = crate::server_link(port, key).await.unwrap();
    let (rd, mut wr) = tokio::io::split(stream);
    wr.write_all(&frame(m::ServerIdMsg {
        host: name.0.into(),
        port: name.1,
        sync: None,
    }))
    .await
    .unwrap();
    wr.flush().await.unwrap();
    (BufReader::new(rd).lines(), wr)
}

/// Reads frames from an attacker's link until `stop` says so or 10 s pass; returns them.
pub async fn read_frames(lines: &mut Lines, mut stop: impl FnMut(&str) -> bool) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        let done = stop(&line);
        got.push(line);
        if done {
            break;
        }
    }
    got
}
