//! Prints one encoded sample of a few message types (used to write docs/protocol.md).
use gossip_common::message::*;
use gossip_common::{ContactList, EventCount, Keypair, Message, Signed, UserId, UserInfo};

fn main() {
    let k = Keypair::from_secret_bytes(&[7; 32]);
    let ip = "::ffff:127.0.0.1".parse().unwrap();
    let mut u = UserInfo::new(UserId(1_234_567_890_123), k.public());
    u.nick_name = "alice".into();
    u.status = "online".into();
    u.event_count = EventCount::new(3, false);
    let u = Signed::sign(u, &k).unwrap();
    let cl = Signed::sign(
        ContactList::new(UserId(1), EventCount::new(2, false), vec![UserId(2)]),
        &k,
    )
    .unwrap();
    let bodies: Vec<Body> = vec![
        UserInfoMsg { record: u }.into(),
        ChangeCl { record: cl }.into(),
        EventCounts {
            last: 1,
            userdb: EcList {
                entries: vec![EcEntry::new(UserId(1), EventCount::new(3, false))],
            },
            contactlist: EcList::default(),
        }
        .into(),
        Error {
            code: ErrorCode::StaleEventCount,
            text: "stored 5".into(),
            current: Some(EventCount::new(5, false).into()),
        }
        .into(),
        UpdateRtts {
            host: "a".into(),
            port: 1,
            seq: 17,
            rtts: vec![RttEntry {
                host: "b".into(),
                port: 2,
                ms: Some(12.25),
            }],
            key: Some("abababababababababababababababababababababababababababababababab".into()),
            sig: Some("cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd".into()),
        }
        .into(),
    ];
    for b in bodies {
        println!("{}\n", Message::new(ip, b).with_id(7).to_xml());
    }
}
