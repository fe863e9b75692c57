//! The encrypted, authenticated channel every TCP connection runs in (client ↔ server and
//! server ↔ server): Noise over X25519, ChaCha20-Poly1305 and BLAKE2s (the `snow` crate), `XX`
//! between servers and `NX` from clients.
//!
//! Why Noise and not TLS: Gossip's identities are raw ed25519 keys bound to names on first sight,
//! with no certificate authority anywhere; Noise authenticates raw keys natively, its handshake
//! is a round trip or two of a few hundred bytes, and `XX`/`NX` let a side learn the other's key
//! without knowing it in advance (first contact) while hiding the identities from a passive
//! observer. Clients use `NX`: they have no static key to prove (the login challenge proves the
//! user's), which saves the server one of four X25519 operations per connection and the client
//! a round trip.
//!
//! Binding Noise to the ed25519 identity: each process makes a fresh X25519 static key and signs
//! it with its ed25519 identity (domain [`Domain::NoiseStatic`]); the signature and the identity
//! key travel as the encrypted handshake payload (as libp2p's Noise does). A peer that shows an
//! identity therefore proves it holds both the identity key and the Noise key of this very
//! handshake. The responder (a server) always shows one (message 2); a dialling server shows one
//! in message 3 (`XX`); a client shows none (`NX`).
//!
//! Layers: the handshake ([`connect`], [`accept`]) runs on the raw stream with its own 2-byte
//! length framing; afterwards [`SecureStream`] (or its halves, [`SecureReader`] and
//! [`SecureWriter`]) is an ordinary `AsyncRead + AsyncWrite`, so the XML framing above does not
//! know it is encrypted. Every transport message is `u16 length ‖ ciphertext`, at most 65,535
//! bytes; writes are encrypted per `poll_write` call (a codec's whole buffer of frames at once)
//! and must be flushed, as with a `BufWriter`.
//!
//! A plaintext peer (its first byte is `<` or whitespace, the start of an XML frame) gets one
//! plaintext `error` saying encryption is required, then the connection closes.
//!
//! Where things live: [`Identity`] and the proof binding a Noise key to an ed25519 identity in
//! `identity`; [`connect`] and [`accept`] (the handshake and its framing, the plaintext
//! refusal) in `handshake`; [`SecureStream`] and its halves (the transport encryption) in
//! `stream`.
//!
//! [`Domain::NoiseStatic`]: crate::crypto::Domain::NoiseStatic

mod handshake;
mod identity;
mod stream;
#[cfg(test)]
mod tests;

pub use self::handshake::{accept, connect};
pub use self::identity::Identity;
pub use self::stream::{SecureReader, SecureStream, SecureWriter};

use std::io;
use std::time::Duration;

/// The Noise protocol between servers: `XX`, both sides prove a static key.
pub const NOISE_FEDERATION: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// The Noise protocol from clients: `NX`, only the server proves a static key (the client
/// proves its user key inside the channel, by the login challenge). One round trip and three
/// X25519 operations on the server instead of `XX`'s four.
pub const NOISE_CLIENT: &str = "Noise_NX_25519_ChaChaPoly_BLAKE2s";

/// The whole handshake must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection is for; part of the Noise prologue, so a client handshake with a server
/// port (or the reverse) fails instead of running the wrong protocol encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A chat client on the client port (P).
    Client,
    /// A server link on the server port (P+1).
    Federation,
}

impl Purpose {
    fn params(self) -> snow::params::NoiseParams {
        match self {
            Purpose::Client => NOISE_CLIENT,
            Purpose::Federation => NOISE_FEDERATION,
        }
        .parse()
        .expect("a valid Noise protocol name")
    }

    /// Whether the initiator proves a static key (message 3).
    fn mutual(self) -> bool {
        self == Purpose::Federation
    }

    fn prologue(self) -> &'static [u8] {
        match self {
            Purpose::Client => b"gossip/1 client",
            Purpose::Federation => b"gossip/1 federation",
        }
    }
}

/// Why a handshake or a secured stream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecureError {
    /// The socket failed or closed.
    #[error("connection failed during the encryption handshake: {0}")]
    Io(#[from] io::Error),
    /// The peer spoke plaintext XML to an encrypted port.
    #[error("the peer sent plaintext; this port accepts only encrypted (Noise) connections")]
    Plaintext,
    /// The peer answered in plaintext: a refusal sent before any handshake (a full server), or
    /// a server from before encryption. Holds what it sent (at most 4 KiB).
    #[error("the server answered in plaintext: {}", String::from_utf8_lossy(.0).trim())]
    PlaintextAnswer(Vec<u8>),
    /// The handshake bytes were not valid Noise.
    #[error("encryption handshake failed: {0}")]
    Noise(String),
    /// The peer's identity payload is missing, malformed or its signature does not verify.
    #[error("the peer's identity does not verify: {0}")]
    BadIdentity(&'static str),
    /// The handshake took longer than [`HANDSHAKE_TIMEOUT`].
    #[error("encryption handshake timed out")]
    Timeout,
}

impl From<snow::Error> for SecureError {
    fn from(e: snow::Error) -> Self {
        SecureError::Noise(e.to_string())
    }
}
