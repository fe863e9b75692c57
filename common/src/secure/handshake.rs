//! The Noise handshake ([`connect`] as the initiator, [`accept`] as the responder) on the raw
//! stream, with its own 2-byte length framing and deadline, and the plaintext refusal a
//! plaintext peer gets. Once it is done the stream is handed to [`SecureStream`].

use snow::{Builder, HandshakeState};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::identity::{peer_identity, Identity};
use super::stream::SecureStream;
use super::{Purpose, SecureError, HANDSHAKE_TIMEOUT};
use crate::crypto::PublicKey;

/// Handshake messages are a few hundred bytes; anything longer is not a Gossip peer.
const MAX_HANDSHAKE_MESSAGE: usize = 1024;

fn builder<'a>(
    purpose: Purpose,
    me: &'a Identity,
    initiator: bool,
) -> Result<Builder<'a>, SecureError> {
    let b = Builder::new(purpose.params()).prologue(purpose.prologue())?;
    if initiator && !purpose.mutual() {
        return Ok(b); // NX: the initiator has no static key
    }
    if me.noise_private.is_empty() {
        return Err(SecureError::BadIdentity(
            "this side has no identity to prove",
        ));
    }
    Ok(b.local_private_key(&me.noise_private)?)
}

async fn send_handshake<S: AsyncWrite + Unpin>(
    stream: &mut S,
    hs: &mut HandshakeState,
    payload: &[u8],
) -> Result<(), SecureError> {
    let mut buf = [0u8; 2 + MAX_HANDSHAKE_MESSAGE];
    let n = hs.write_message(payload, &mut buf[2..])?;
    buf[..2].copy_from_slice(&(n as u16).to_be_bytes());
    stream.write_all(&buf[..2 + n]).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads one handshake message and returns its payload. `first` = the two length bytes when
/// the caller already read them.
async fn recv_handshake<S: AsyncRead + Unpin>(
    stream: &mut S,
    hs: &mut HandshakeState,
    first: Option<[u8; 2]>,
) -> Result<Vec<u8>, SecureError> {
    let len = match first {
        Some(b) => b,
        None => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b).await?;
            if looks_like_xml(b[0]) {
                // Keep what it says (a refusal such as `server-full` comes this way).
                let mut said = b.to_vec();
                let _ = (&mut *stream).take(4096).read_to_end(&mut said).await;
                return Err(SecureError::PlaintextAnswer(said));
            }
            b
        }
    };
    let len = u16::from_be_bytes(len) as usize;
    if len > MAX_HANDSHAKE_MESSAGE {
        return Err(SecureError::Noise(format!(
            "handshake message of {len} bytes"
        )));
    }
    let mut msg = vec![0u8; len];
    stream.read_exact(&mut msg).await?;
    let mut payload = vec![0u8; len];
    let n = hs.read_message(&msg, &mut payload)?;
    payload.truncate(n);
    Ok(payload)
}

/// The first byte of an XML frame (or the whitespace before one). A Noise message length this
/// large (≥ 0x0900 bytes) is never a handshake message, so the test cannot misjudge a peer.
fn looks_like_xml(b: u8) -> bool {
    matches!(b, b'<' | b' ' | b'\t' | b'\r' | b'\n')
}

/// The plaintext refusal a plaintext peer gets before the connection closes.
fn plaintext_refusal() -> Vec<u8> {
    let mut out = crate::codec::encode_frame(crate::message::Error {
        code: crate::ErrorCode::UnsupportedVersion,
        text: "this port accepts only encrypted connections (Noise); \
               upgrade your client or server"
            .to_owned(),
        current: None,
    })
    .to_vec();
    out.extend_from_slice(crate::codec::FRAME_END);
    out
}

/// Opens the channel as the initiator. Returns the secured stream and the responder's proven
/// identity key (a Gossip server always proves one).
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    purpose: Purpose,
    me: &Identity,
) -> Result<(SecureStream<S>, PublicKey), SecureError> {
    within_deadline(connect_inner(stream, purpose, me)).await
}

/// Runs a handshake under [`HANDSHAKE_TIMEOUT`].
async fn within_deadline<T>(
    handshake: impl std::future::Future<Output = Result<T, SecureError>>,
) -> Result<T, SecureError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| SecureError::Timeout)?
}

async fn connect_inner<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    purpose: Purpose,
    me: &Identity,
) -> Result<(SecureStream<S>, PublicKey), SecureError> {
    let mut hs = builder(purpose, me, true)?.build_initiator()?;
    send_handshake(&mut stream, &mut hs, &[]).await?;
    let payload = recv_handshake(&mut stream, &mut hs, None).await?;
    let peer = peer_identity(&hs, &payload)?;
    if purpose.mutual() {
        send_handshake(&mut stream, &mut hs, &me.payload).await?;
    }
    Ok((SecureStream::new(stream, hs)?, peer))
}

/// Accepts the channel as the responder. Returns the secured stream and the initiator's proven
/// identity, `None` when it chose to stay anonymous (`require_identity` refuses that).
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    purpose: Purpose,
    me: &Identity,
    require_identity: bool,
) -> Result<(SecureStream<S>, Option<PublicKey>), SecureError> {
    within_deadline(accept_inner(stream, purpose, me, require_identity)).await
}

async fn accept_inner<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    purpose: Purpose,
    me: &Identity,
    require_identity: bool,
) -> Result<(SecureStream<S>, Option<PublicKey>), SecureError> {
    let mut first = [0u8; 2];
    stream.read_exact(&mut first).await?;
    if looks_like_xml(first[0]) {
        let _ = stream.write_all(&plaintext_refusal()).await;
        let _ = stream.shutdown().await;
        return Err(SecureError::Plaintext);
    }
    let mut hs = builder(purpose, me, false)?.build_responder()?;
    let payload = recv_handshake(&mut stream, &mut hs, Some(first)).await?;
    if !payload.is_empty() {
        return Err(SecureError::Noise(
            "unexpected payload in the first message".into(),
        ));
    }
    send_handshake(&mut stream, &mut hs, &me.payload).await?;
    let payload = if purpose.mutual() {
        recv_handshake(&mut stream, &mut hs, None).await?
    } else {
        Vec::new()
    };
    let peer = if payload.is_empty() {
        None
    } else {
        Some(peer_identity(&hs, &payload)?)
    };
    if require_identity && peer.is_none() {
        return Err(SecureError::BadIdentity("no identity shown"));
    }
    Ok((SecureStream::new(stream, hs)?, peer))
}
