//! Fuzzes the whole inbound path: arbitrary bytes, fed in arbitrary chunk sizes, through the
//! frame decoder and the message parser. Invariants: no panic, buffered bytes stay bounded, and
//! every frame that decodes re-encodes to something that decodes to the same message.
#![no_main]

use bytes::BytesMut;
use gossip_common::{Message, XmlFrameCodec};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut codec = XmlFrameCodec::new(MAX);
    let mut buf = BytesMut::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Ok(frame))) => {
                    assert!(frame.len() <= MAX);
                    if let Ok(msg) = Message::decode(&frame) {
                        let again = Message::decode(msg.to_xml().as_bytes())
                            .expect("re-encoded message must decode");
                        assert_eq!(again, msg);
                    }
                }
                Ok(Some(Err(_))) => {}
                Ok(None) => break,
                Err(_) => return, // fatal: the connection would close
            }
        }
        assert!(
            buf.len() <= MAX + chunk + 16,
            "decoder buffered {} bytes",
            buf.len()
        );
    }
});
