//! Fuzzes the Noise channel from the far end of a socket: the bytes an attacker (on the path, or
//! the peer itself) can put on the wire. The first input byte picks the attack:
//!
//! - 0: garbage as the initiator's handshake messages, to a responder (`secure::accept`);
//! - 1: a real handshake, then garbage in place of transport messages (length prefixes,
//!   ciphertexts), read by the responder;
//! - 2: a real handshake, then the input as the *plaintext* an authenticated peer writes, in
//!   input-chosen pieces: it must arrive byte for byte.
//!
//! Invariants: no panic, no hang (every read is bounded by a timeout), and in mode 2 what was
//! written is what is read.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gossip_common::secure::{self, Identity, Purpose};
use gossip_common::Keypair;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn keys() -> &'static (Arc<Identity>, Arc<Identity>) {
    static KEYS: OnceLock<(Arc<Identity>, Arc<Identity>)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let a = Keypair::from_secret_bytes(&[7; 32]);
        let b = Keypair::from_secret_bytes(&[9; 32]);
        (Identity::new(&a), Identity::new(&b))
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    })
}

const LIMIT: Duration = Duration::from_millis(200);

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let (client, server) = keys();
    let (client, server): (&Identity, &Identity) = (client, server);
    runtime().block_on(async move {
        match mode % 3 {
            0 => {
                let (a, mut far) = tokio::io::duplex(1 << 16);
                let accept = secure::accept(a, Purpose::Federation, server, true);
                let _ = far.write_all(input).await;
                drop(far);
                let _ = tokio::time::timeout(LIMIT, accept).await;
            }
            1 => {
                // Initiator on one pipe, responder on another, the handshake pumped between
                // them; then the attacker's bytes go straight onto the responder's socket.
                let (a, a_far) = tokio::io::duplex(1 << 16);
                let (b, b_far) = tokio::io::duplex(1 << 16);
                let (mut ar, mut aw) = tokio::io::split(a_far);
                let (mut br, mut bw) = tokio::io::split(b_far);
                let handshake = async {
                    tokio::join!(
                        secure::connect(a, Purpose::Federation, client),
                        secure::accept(b, Purpose::Federation, server, true),
                    )
                };
                let done = {
                    let pump = async {
                        let _ = tokio::join!(
                            tokio::io::copy(&mut ar, &mut bw),
                            tokio::io::copy(&mut br, &mut aw)
                        );
                    };
                    tokio::select! {
                        r = handshake => Some(r),
                        _ = pump => None,
                    }
                };
                let Some((_, Ok((mut responder, _)))) = done else {
                    panic!("a clean handshake failed")
                };
                let _ = bw.write_all(input).await;
                // End of stream after the garbage (the pump's halves are gone with it).
                let _ = bw.shutdown().await;
                drop((ar, aw, br));
                let mut buf = vec![0u8; 1 << 16];
                let _ = tokio::time::timeout(LIMIT, async {
                    while let Ok(n) = responder.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
            }
            _ => {
                let (a, b) = tokio::io::duplex(1 << 16);
                let (c, s) = tokio::join!(
                    secure::connect(a, Purpose::Federation, client),
                    secure::accept(b, Purpose::Federation, server, true),
                );
                let (Ok((mut c, _)), Ok((mut s, _))) = (c, s) else {
                    panic!("a clean handshake failed")
                };
                let Some((&piece, plain)) = input.split_first() else {
                    return;
                };
                let piece = usize::from(piece).max(1) * 64;
                let expected = plain.to_vec();
                let write = async {
                    for chunk in plain.chunks(piece) {
                        c.write_all(chunk).await.unwrap();
                    }
                    c.shutdown().await.unwrap();
                };
                let read = async {
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).await.unwrap();
                    got
                };
                let ((), got) = tokio::time::timeout(Duration::from_secs(5), async {
                    tokio::join!(write, read)
                })
                .await
                .expect("an honest stream hung");
                assert_eq!(got, expected, "the channel changed what was written");
            }
        }
    });
});
