//! End-to-end tests of the channel: handshakes of both purposes through to the secured streams.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::identity::noise_keypair;
use super::*;
use crate::crypto::{Keypair, PublicKey};
use tokio::io::duplex;

async fn pair(
    client_id: Arc<Identity>,
) -> (
    SecureStream<tokio::io::DuplexStream>,
    SecureStream<tokio::io::DuplexStream>,
    PublicKey,
    Option<PublicKey>,
) {
    let purpose = if client_id.public().is_some() {
        Purpose::Federation
    } else {
        Purpose::Client
    };
    pair_for(purpose, client_id).await
}

async fn pair_for(
    purpose: Purpose,
    client_id: Arc<Identity>,
) -> (
    SecureStream<tokio::io::DuplexStream>,
    SecureStream<tokio::io::DuplexStream>,
    PublicKey,
    Option<PublicKey>,
) {
    let server_key = Keypair::generate();
    let server_id = Identity::new(&server_key);
    let (a, b) = duplex(1 << 20);
    let (c, s) = tokio::join!(
        connect(a, purpose, &client_id),
        accept(b, purpose, &server_id, false)
    );
    let (c, seen_server) = c.unwrap();
    let (s, seen_client) = s.unwrap();
    assert_eq!(seen_server, server_key.public());
    (c, s, seen_server, seen_client)
}

#[tokio::test]
async fn both_ways_large_and_small_writes_arrive_intact() {
    let (mut c, mut s, _, who) = pair(Identity::anonymous()).await;
    assert!(who.is_none());
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let send = big.clone();
    let writer = tokio::spawn(async move {
        c.write_all(&send).await.unwrap();
        c.write_all(b"tail").await.unwrap();
        c.flush().await.unwrap();
        let mut back = [0u8; 2];
        c.read_exact(&mut back).await.unwrap();
        back
    });
    let mut got = vec![0u8; big.len() + 4];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got[..big.len()], &big[..]);
    assert_eq!(&got[big.len()..], b"tail");
    s.write_all(b"ok").await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(&writer.await.unwrap(), b"ok");
}

#[tokio::test]
async fn a_vectored_write_of_many_frames_arrives_in_order() {
    let (mut c, mut s, _, _) = pair(Identity::anonymous()).await;
    let frames: Vec<Vec<u8>> = (0..500)
        .map(|i| format!("<f n='{i}'/>").into_bytes())
        .collect();
    let mut slices: Vec<io::IoSlice<'_>> = Vec::new();
    for f in &frames {
        slices.push(io::IoSlice::new(f));
        slices.push(io::IoSlice::new(b"\n"));
    }
    let expect: Vec<u8> = frames
        .iter()
        .flat_map(|f| f.iter().copied().chain([b'\n']))
        .collect();
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        let n = c.write_vectored(bufs).await.unwrap();
        io::IoSlice::advance_slices(&mut bufs, n);
    }
    c.flush().await.unwrap();
    let mut got = vec![0u8; expect.len()];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(got, expect);
}

#[tokio::test]
async fn a_dialling_servers_identity_is_proven_and_a_clients_is_not_sent() {
    let key = Keypair::generate();
    let (_, _, _, who) = pair_for(Purpose::Federation, Identity::new(&key)).await;
    assert_eq!(who, Some(key.public()));
    // NX: a client never shows a static key, even when it has an identity.
    let (mut c, mut s, _, who) = pair_for(Purpose::Client, Identity::new(&key)).await;
    assert_eq!(who, None);
    c.write_all(b"x").await.unwrap();
    c.flush().await.unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).await.unwrap();
}

#[tokio::test]
async fn a_plaintext_peer_is_refused_with_a_readable_error() {
    let server_id = Identity::new(&Keypair::generate());
    let (mut a, b) = duplex(1 << 16);
    a.write_all(b"<ping/>\n").await.unwrap();
    let r = accept(b, Purpose::Client, &server_id, false).await;
    assert!(matches!(r, Err(SecureError::Plaintext)));
    let mut text = String::new();
    a.read_to_string(&mut text).await.unwrap();
    assert!(text.contains("encrypted"), "{text}");
    assert!(text.starts_with("<error"), "{text}");
}

#[tokio::test]
async fn purposes_do_not_mix_and_anonymous_is_refused_when_identity_is_required() {
    let server_id = Identity::new(&Keypair::generate());
    let anon = Identity::anonymous();
    let (a, b) = duplex(1 << 16);
    let (c, s) = tokio::join!(
        connect(a, Purpose::Client, &anon),
        accept(b, Purpose::Federation, &server_id, false)
    );
    assert!(c.is_err() || s.is_err());
    // A server link whose initiator has a Noise key but proves no identity with it.
    let (noise_private, noise_public) = noise_keypair();
    let unproven = Identity {
        noise_private,
        noise_public,
        payload: Vec::new(),
        public: None,
    };
    let (a, b) = duplex(1 << 16);
    let (_, s) = tokio::join!(
        connect(a, Purpose::Federation, &unproven),
        accept(b, Purpose::Federation, &server_id, true)
    );
    assert!(matches!(s, Err(SecureError::BadIdentity(_))), "{s:?}");
    // And an initiator with no key at all cannot start a server link.
    let (a, _b) = duplex(1 << 16);
    assert!(matches!(
        connect(a, Purpose::Federation, &anon).await,
        Err(SecureError::BadIdentity(_))
    ));
}
