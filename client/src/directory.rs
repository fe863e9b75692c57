//! Finding people without their 19-digit UserID: the server's directory search
//! ([`GossipClient::find`]), contact cards people paste to each other ([`Card`]), key
//! fingerprints to compare by eye ([`fingerprint`]), and turning what a person typed — a
//! UserID, a card, a nickname or an e-mail — into one user ([`GossipClient::resolve`]).
//!
//! A nickname is not an identity: anyone can register as "bob". So a user found by name is
//! always shown with their key's fingerprint before being added, and a card carries the
//! fingerprint of the key it was made for: a card whose fingerprint is not the key the servers
//! hold is refused (a forged or stale card), never silently accepted.

use gossip_common::message as m;
use gossip_common::{PublicKey, Signed, UserId, UserInfo};

use crate::{ClientError, GossipClient};

/// Hex digits of a key a fingerprint shows: 32 (128 bits), enough to compare by eye.
const FINGERPRINT_DIGITS: usize = 32;

/// A key's fingerprint as people compare it: its first 32 hex digits in groups of four
/// (`0123 4567 89ab …`).
pub fn fingerprint(key: &PublicKey) -> String {
    compact_fingerprint(key)
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A key's fingerprint without spaces, as a card carries it.
fn compact_fingerprint(key: &PublicKey) -> String {
    key.to_string().chars().take(FINGERPRINT_DIGITS).collect()
}

/// A contact card: one line naming a user, their key's fingerprint and a server they use,
/// in the form `alice <gossip:3648494103546560513?fp=0123…cdef&server=host:1024>`. The part in
/// angle brackets is the card; the name before it is only what its owner calls themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    /// The user.
    pub uid: UserId,
    /// Their nickname when the card was made (informational).
    pub nick: Option<String>,
    /// The first 32 hex digits of their key.
    pub fingerprint: String,
    /// A server they use, `host:port` (informational: every server holds every user).
    pub server: Option<String>,
}

impl Card {
    /// The card of `uid` with key `key`.
    pub fn new(uid: UserId, key: &PublicKey, nick: Option<&str>, server: Option<&str>) -> Card {
        Card {
            uid,
            nick: nick.filter(|n| !n.trim().is_empty()).map(str::to_owned),
            fingerprint: compact_fingerprint(key),
            server: server.map(str::to_owned),
        }
    }

    /// Finds a card in `text` (a whole card line, or just its `gossip:` part).
    pub fn parse(text: &str) -> Option<Card> {
        let at = text.find("gossip:")?;
        let uri = text[at + "gossip:".len()..]
            .split(|c: char| c == '>' || c.is_whitespace())
            .next()
            .unwrap_or("");
        let (uid, query) = uri.split_once('?').unwrap_or((uri, ""));
        let uid = UserId(uid.parse().ok()?);
        let mut fingerprint = None;
        let mut server = None;
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("fp", v)) => fingerprint = Some(v.to_ascii_lowercase()),
                Some(("server", v)) if !v.is_empty() => server = Some(v.to_owned()),
                _ => {}
            }
        }
        let fingerprint = fingerprint.filter(|f| {
            f.len() >= 16 && f.len() <= 64 && f.chars().all(|c| c.is_ascii_hexdigit())
        })?;
        let nick = text[..at].trim().trim_end_matches('<').trim().to_owned();
        Some(Card {
            uid,
            nick: (!nick.is_empty()).then_some(nick),
            fingerprint,
            server,
        })
    }

    /// Whether `key` is the key this card was made for.
    pub fn is_for(&self, key: &PublicKey) -> bool {
        key.to_string().starts_with(&self.fingerprint)
    }
}

impl std::fmt::Display for Card {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(nick) = &self.nick {
            write!(f, "{nick} ")?;
        }
        write!(f, "<gossip:{}?fp={}", self.uid, self.fingerprint)?;
        if let Some(server) = &self.server {
            write!(f, "&server={server}")?;
        }
        write!(f, ">")
    }
}

/// What a person typed to name someone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// A UserID.
    Uid(UserId),
    /// A contact card.
    Card(Card),
    /// Anything else: a nickname, an e-mail, words of a name, searched for.
    Text(String),
}

impl Who {
    /// Reads what was typed.
    pub fn parse(text: &str) -> Who {
        let text = text.trim();
        if let Some(card) = Card::parse(text) {
            return Who::Card(card);
        }
        match text.parse::<u64>() {
            Ok(uid) => Who::Uid(UserId(uid)),
            Err(_) => Who::Text(text.to_owned()),
        }
    }
}

/// Who a name turned out to be.
#[derive(Debug, Clone)]
pub enum Found {
    /// Exactly one user.
    One(Signed<UserInfo>),
    /// Several users: the person must choose.
    Several(Vec<Signed<UserInfo>>),
    /// Nobody.
    NoOne,
}

/// Narrows search results to who `text` names: the users whose nickname or e-mail *is*
/// `text` (ignoring case) if there are any, else every result.
pub fn choose(text: &str, mut found: Vec<Signed<UserInfo>>) -> Found {
    let text = text.trim();
    let exact: Vec<_> = found
        .iter()
        .filter(|r| r.nick_name.eq_ignore_ascii_case(text) || r.email.eq_ignore_ascii_case(text))
        .cloned()
        .collect();
    if !exact.is_empty() {
        found = exact;
    }
    match found.len() {
        0 => Found::NoOne,
        1 => Found::One(found.remove(0)),
        _ => Found::Several(found),
    }
}

/// A card naming a key other than the one the servers hold for its user.
#[derive(Debug, thiserror::Error)]
#[error(
    "the card says {uid}'s key starts {card}, but the servers hold a key starting {held}: \
     the card is forged or out of date; ask its owner for a new one"
)]
pub struct CardMismatch {
    /// The user.
    pub uid: UserId,
    /// The card's fingerprint.
    pub card: String,
    /// The held key's.
    pub held: String,
}

impl GossipClient {
    /// Searches the server's directory: the users whose nickname, name, e-mail or location
    /// have a word starting with each word of `text` (case-insensitive), at most `limit` (the
    /// server caps it, at 50 today), best first. Records that do not verify are dropped.
    pub async fn find(
        &self,
        text: &str,
        limit: Option<u32>,
    ) -> Result<Vec<Signed<UserInfo>>, ClientError> {
        let answers = self
            .request(m::SearchUsers {
                text: text.to_owned(),
                limit,
            })
            .await?;
        Ok(crate::contacts::verified_users(answers))
    }

    /// Who `who` names: a UserID's or a card's record (a card's fingerprint checked against
    /// the key held for it), or the directory's matches for a name. `Ok(Err(_))` is a card
    /// that does not match.
    pub async fn resolve(&self, who: &Who) -> Result<Result<Found, CardMismatch>, ClientError> {
        let uid = match who {
            Who::Text(text) => return Ok(Ok(choose(text, self.find(text, None).await?))),
            Who::Uid(uid) => *uid,
            Who::Card(card) => card.uid,
        };
        let Some(record) = self.fetch_users(&[uid]).await?.pop() else {
            return Ok(Ok(Found::NoOne));
        };
        if let Who::Card(card) = who {
            if !card.is_for(&record.public_key) {
                return Ok(Err(CardMismatch {
                    uid,
                    card: card.fingerprint.clone(),
                    held: compact_fingerprint(&record.public_key),
                }));
            }
        }
        Ok(Ok(Found::One(record)))
    }
}

#[cfg(test)]
mod tests {
    use gossip_common::Keypair;

    use super::*;

    fn record(uid: u64, nick: &str, email: &str) -> Signed<UserInfo> {
        let key = Keypair::generate();
        let mut u = UserInfo::new(UserId(uid), key.public());
        u.nick_name = nick.into();
        u.email = email.into();
        Signed::sign(u, &key).unwrap()
    }

    #[test]
    fn a_card_prints_and_parses_back_with_or_without_its_name() {
        let key = Keypair::generate().public();
        let card = Card::new(
            UserId(3648494103546560513),
            &key,
            Some("alice"),
            Some("h:1024"),
        );
        let line = card.to_string();
        assert!(
            line.starts_with("alice <gossip:3648494103546560513?fp="),
            "{line}"
        );
        assert_eq!(Card::parse(&line), Some(card.clone()));
        assert!(card.is_for(&key));
        assert!(!card.is_for(&Keypair::generate().public()));
        // Just the URI, pasted out of a message.
        let uri = line.split('<').nth(1).unwrap().trim_end_matches('>');
        let bare = Card::parse(uri).unwrap();
        assert_eq!((bare.uid, bare.nick), (card.uid, None));
        // No name, no server.
        let plain = Card::new(UserId(7), &key, None, None);
        assert_eq!(Card::parse(&plain.to_string()), Some(plain));
    }

    #[test]
    fn what_people_type_is_a_uid_a_card_or_a_name() {
        let key = Keypair::generate().public();
        let card = Card::new(UserId(42), &key, Some("bob"), None);
        assert_eq!(Who::parse(" 42 "), Who::Uid(UserId(42)));
        assert_eq!(Who::parse(&card.to_string()), Who::Card(card));
        assert_eq!(Who::parse("bob"), Who::Text("bob".into()));
        assert_eq!(
            Who::parse("bob@example.org"),
            Who::Text("bob@example.org".into())
        );
        // A card without a fingerprint is not a card.
        assert_eq!(
            Who::parse("gossip:42"),
            Who::Text("gossip:42".into()),
            "a card must carry a fingerprint"
        );
    }

    #[test]
    fn an_exact_nickname_or_email_wins_over_prefix_matches() {
        let found = vec![record(1, "Bob", ""), record(2, "bobby", "")];
        assert!(matches!(choose("bob", found.clone()), Found::One(r) if r.user_id == UserId(1)));
        assert!(matches!(choose("bo", found), Found::Several(v) if v.len() == 2));
        let by_mail = vec![record(3, "x", "bob@example.org"), record(4, "bob", "")];
        assert!(
            matches!(choose("BOB@example.org", by_mail), Found::One(r) if r.user_id == UserId(3))
        );
        // Two users who both call themselves bob: the person chooses.
        let twins = vec![record(5, "bob", ""), record(6, "bob", "")];
        assert!(matches!(choose("bob", twins), Found::Several(v) if v.len() == 2));
        assert!(matches!(choose("carol", vec![]), Found::NoOne));
    }

    #[test]
    fn a_fingerprint_is_the_keys_first_32_digits_in_fours() {
        let key = Keypair::generate().public();
        let fp = fingerprint(&key);
        assert_eq!(fp.len(), 32 + 7);
        assert_eq!(fp.replace(' ', ""), key.to_string()[..32]);
    }
}
