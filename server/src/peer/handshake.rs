//! A server link's opening: the Noise handshake (whoever dialled initiates; both ends prove an
//! identity key), then `serverID` both ways, then the admission checks — not deleted by an
//! admin, the identity expected, within its key's link-up rate, and the key bound to its name
//! (or bindable on first sight). A refused peer gets one `error` saying why.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use gossip_common::codec::{encode_frame, write_frames};
use gossip_common::message as m;
use gossip_common::secure::{self, Purpose, SecureReader, SecureWriter};
use gossip_common::{Body, Message, PublicKey, XmlFrameCodec};
use tokio::io::{ReadHalf, WriteHalf};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::writer::refuse_link;
use super::PeerDoor;
use crate::federation::transport::Conn;
use crate::federation::{LinkEnd, LinkKind};
use crate::mst::{id_string, ServerId};
use crate::relay::mailsync;
use crate::replication::resync;

/// How long a peer has to send its `serverID` once the channel is up.
const SERVER_ID_WAIT: Duration = Duration::from_secs(10);

/// A link's frames in.
pub(super) type Frames = FramedRead<SecureReader<ReadHalf<Conn>>, XmlFrameCodec>;

/// A link through its opening, admitted.
pub(super) struct Opened {
    /// Who the peer is.
    pub(super) peer: ServerId,
    /// The key it proved.
    pub(super) key: PublicKey,
    /// Whether it offers range reconciliation.
    pub(super) offers_range: bool,
    /// Whether it offers the link-up mailbox exchange.
    pub(super) offers_mailbox: bool,
    /// A tree link or a repair check.
    pub(super) kind: LinkKind,
    /// The link's frames in.
    pub(super) frames: Frames,
    /// The link's writing half.
    pub(super) wr: SecureWriter<WriteHalf<Conn>>,
}

/// The word a dialler's `serverID` carries to open a repair check instead of a link.
pub(super) const CHECK: &str = "check";

/// What this server says in its `serverID`: who it is, which resyncs it offers, and whether
/// this is a repair check.
fn hello(door: &PeerDoor, kind: LinkKind) -> bytes::Bytes {
    let me = door.federation.me();
    let offers = [
        door.replication.offers_range().then_some(resync::OFFER),
        Some(mailsync::OFFER),
        (kind == LinkKind::Check).then_some(CHECK),
    ];
    encode_frame(m::ServerIdMsg {
        host: me.0.clone(),
        port: me.1,
        sync: Some(offers.into_iter().flatten().collect::<Vec<_>>().join(" ")),
    })
}

/// Opens a link on `stream` (`expect` = the peer we dialled for `kind`, `None` for an accepted
/// connection, which is what the peer's `serverID` asks for).
pub(super) async fn open(
    door: &PeerDoor,
    stream: Conn,
    expect: Option<&ServerId>,
    kind: LinkKind,
    addr: SocketAddr,
    shutdown: &CancellationToken,
) -> Result<Opened, LinkEnd> {
    // The encrypted channel first: whoever dialled initiates, and both ends must prove an
    // identity key.
    let noise = door.keys.noise();
    let started = std::time::Instant::now();
    let handshake = tokio::select! {
        _ = shutdown.cancelled() => return Err(LinkEnd::NotUp("shutting down")),
        h = async {
            if expect.is_some() {
                Box::pin(secure::connect(stream, Purpose::Federation, noise)).await.map(|(s, k)| (s, Some(k)))
            } else {
                Box::pin(secure::accept(stream, Purpose::Federation, noise, true)).await
            }
        } => h,
    };
    let (stream, key) = match handshake {
        Ok((s, Some(k))) => {
            crate::metrics::observe(&door.metrics.handshake_seconds.server, started);
            (s, k)
        }
        Ok((_, None)) => return Err(LinkEnd::NotUp("no identity shown")),
        Err(e) => {
            door.metrics.handshakes_failed.inc();
            tracing::info!(%addr, error = %e, "server link refused: encryption handshake failed");
            return Err(LinkEnd::NotUp("encryption handshake failed"));
        }
    };
    let (rd, mut wr) = stream.split_with(tokio::io::split);
    let mut frames = FramedRead::new(rd, XmlFrameCodec::new(door.settings.max_frame));
    // serverID first, both ways.
    if write_frames(&mut wr, &[hello(door, kind)]).await.is_err() {
        return Err(LinkEnd::NotUp("closed before the handshake"));
    }
    let first = tokio::select! {
        _ = shutdown.cancelled() => return Err(LinkEnd::NotUp("shutting down")),
        first = tokio::time::timeout(SERVER_ID_WAIT, frames.next()) => first,
    };
    let id = match first {
        Ok(Some(Ok(Ok(frame)))) => match Message::decode(&frame) {
            Ok(Message {
                body: Body::ServerId(id),
                ..
            }) => id,
            _ => {
                tracing::info!(%addr, "server link refused: first message was not serverID");
                refuse_link(
                    &mut wr,
                    "the first message on a server link must be serverID",
                )
                .await;
                return Err(LinkEnd::NotUp("first message was not serverID"));
            }
        },
        Err(_) => return Err(LinkEnd::NotUp("no serverID within 10 s")),
        Ok(_) => return Err(LinkEnd::NotUp("closed before its serverID")),
    };
    let peer: ServerId = (id.host, id.port);
    let fed = &door.federation;
    if fed.is_deleted(&peer) {
        tracing::info!(%addr, peer = %id_string(&peer), "server link refused: deleted by an admin");
        return Err(LinkEnd::NotUp("deleted by an admin"));
    }
    if peer == *fed.me() || expect.is_some_and(|e| *e != peer) {
        tracing::warn!(%addr, peer = %id_string(&peer), "server link refused: unexpected identity");
        return Err(LinkEnd::NotUp("unexpected identity"));
    }
    if !fed.take_link_up(&key) {
        tracing::warn!(%addr, peer = %id_string(&peer), "server link refused: too many links from this key");
        refuse_link(&mut wr, "too many links from your key; wait a few seconds").await;
        return Err(LinkEnd::NotUp("too many links from its key"));
    }
    let verdict = fed.claim_key(&peer, &key);
    if !verdict.accepted() {
        door.metrics.refused_keys.inc();
        tracing::warn!(%addr, peer = %id_string(&peer), key = %key, why = verdict.why(), "server link refused for its key");
        let text = format!(
            "{} refuses this link: {}",
            id_string(fed.me()),
            verdict.why()
        );
        refuse_link(&mut wr, &text).await;
        return Err(LinkEnd::NotUp("its key is refused"));
    }
    let kind = match expect {
        Some(_) => kind,
        None if id
            .sync
            .as_deref()
            .is_some_and(|s| s.split_whitespace().any(|w| w == CHECK)) =>
        {
            LinkKind::Check
        }
        None => LinkKind::Tree,
    };
    Ok(Opened {
        peer,
        key,
        kind,
        offers_range: resync::offers_range(id.sync.as_deref()),
        offers_mailbox: mailsync::offered(id.sync.as_deref()),
        frames,
        wr,
    })
}
