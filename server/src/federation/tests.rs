//! The link table's decisions, without sockets: which of two simultaneous links survives, a
//! stale link's end not removing its successor, and flooding's rules (never back to the sender,
//! a stuck link cut rather than waited for).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use gossip_common::rtt::{ProbeConfig, Rtt};
use gossip_common::Keypair;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::transport::{BoxFuture, Conn, ConnectError, Transport};
use super::{keyring, Federation, LinkQueue, NewLink, Probing};
use crate::mst::ServerId;

/// A transport nothing can be reached through.
struct Nowhere;

impl Transport for Nowhere {
    fn connect<'a>(
        &'a self,
        _me: &'a ServerId,
        _peer: &'a ServerId,
    ) -> BoxFuture<'a, Result<(Conn, SocketAddr), ConnectError>> {
        Box::pin(async { Err(ConnectError::Refused) })
    }

    fn probe<'a>(
        &'a self,
        _me: &'a ServerId,
        _targets: &'a [ServerId],
        _cfg: &'a ProbeConfig,
    ) -> BoxFuture<'a, std::io::Result<BTreeMap<ServerId, Rtt>>> {
        Box::pin(async { Ok(BTreeMap::new()) })
    }
}

fn id(s: &str) -> ServerId {
    (s.to_owned(), 7000)
}

fn federation(me: &str) -> Federation {
    let ring = keyring::Keyring::new(keyring::Admission::Open, BTreeSet::new(), 100);
    let probing = Probing {
        probe: ProbeConfig::default(),
        reprobe: std::time::Duration::from_secs(60),
        repair: std::time::Duration::ZERO,
    };
    Federation::new(
        id(me),
        &[],
        ring,
        None,
        Keypair::generate(),
        Arc::new(Nowhere),
        probing,
    )
}

/// A link to register, with its control queue's receiving end and its kill switch.
fn new_link(dialled: bool, queue: usize) -> (NewLink, LinkQueue, CancellationToken) {
    let (tx, rx) = mpsc::channel(queue);
    let (bulk, _bulk_rx) = mpsc::channel(1);
    let kill = CancellationToken::new();
    let link = NewLink {
        addr: "127.0.0.1:7001".parse().unwrap(),
        key: Keypair::generate().public(),
        dialled,
        tx,
        bulk,
        kill: kill.clone(),
    };
    (link, rx, kill)
}

#[tokio::test]
async fn of_two_simultaneous_links_the_one_the_smaller_server_opened_survives_on_both_ends() {
    // "b" links with "a"; "a" is the smaller identity, so a link "a" opened wins.
    let b = federation("b");
    let (mine, _rx1, my_kill) = new_link(true, 8);
    let first = b
        .register_link(&id("a"), mine)
        .expect("the first link registers");
    let (theirs, _rx2, their_kill) = new_link(false, 8);
    let second = b
        .register_link(&id("a"), theirs)
        .expect("a's own link wins");
    assert_ne!(first, second);
    assert!(my_kill.is_cancelled(), "the losing link is closed");
    assert!(!their_kill.is_cancelled());
    // Another link of ours now loses to it.
    let (again, _rx3, _) = new_link(true, 8);
    assert_eq!(b.register_link(&id("a"), again), None);
    // The end of the closed link does not unlink the winner.
    b.link_down(&id("a"), first);
    assert_eq!(b.status().links, vec!["a:7000".to_owned()]);
    b.link_down(&id("a"), second);
    assert!(b.status().links.is_empty());
}

#[tokio::test]
async fn a_flood_skips_its_sender_and_cuts_a_stuck_link() {
    let fed = federation("m");
    let (to_a, mut rx_a, kill_a) = new_link(true, 8);
    let (to_b, mut rx_b, kill_b) = new_link(true, 1);
    fed.register_link(&id("a"), to_a).unwrap();
    fed.register_link(&id("b"), to_b).unwrap();
    // Registering announced each new server to the others: drain that first.
    while rx_a.try_recv().is_ok() {}
    while rx_b.try_recv().is_ok() {}
    let frame = Bytes::from_static(b"<ping/>");
    fed.flood(&frame, Some(&id("a")));
    assert!(rx_a.try_recv().is_err(), "never back to where it came from");
    assert_eq!(rx_b.try_recv().unwrap().1, frame);
    // b's queue holds one frame: the second flood fills it, the third finds it full.
    fed.flood(&frame, None);
    fed.flood(&frame, None);
    assert!(kill_b.is_cancelled(), "a link that cannot keep up is cut");
    assert!(!kill_a.is_cancelled());
    assert_eq!(fed.link_drops(), 1);
    let reached = fed.send_reached(&frame, Some(&id("b")), |r| r);
    assert_eq!(reached, BTreeSet::from([id("a")]));
}
