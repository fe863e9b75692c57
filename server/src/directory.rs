//! The user directory: finding people by what their public records say (nickname, name,
//! e-mail, location), so that nobody has to read a 19-digit UserID out over the phone.
//!
//! Every server already holds every user's public record, so a search is a local lookup,
//! answered from an index kept beside the records: an ordered set of `(word, UserID)` pairs.
//! A query's words must each be the *start* of a word of the record (case-insensitive), so a
//! search is a range scan from the query's longest word, checked against the record for the
//! other words. Both the index and a search are bounded: a record contributes at most
//! [`MAX_WORDS_PER_RECORD`] words of at most [`MAX_WORD_CHARS`] characters (a user with a
//! 4 KiB name cannot grow it further), and a search visits at most [`MAX_SCAN`] index
//! entries, so a one-letter query over a million users costs what a precise one does.
//!
//! Pure: the store keeps one [`Directory`] under its own lock and replaces a user's words as
//! it replaces the record; the rate at which a client may search is the session's business.

use std::collections::BTreeSet;

use gossip_common::{UserId, UserInfo};

/// Words one record contributes to the index at most.
pub const MAX_WORDS_PER_RECORD: usize = 24;
/// Characters of a word that are indexed (and compared) at most.
pub const MAX_WORD_CHARS: usize = 48;
/// Words of a query at most.
pub const MAX_QUERY_WORDS: usize = 8;
/// Index entries one search visits at most.
pub const MAX_SCAN: usize = 2_000;
/// Matches one search returns at most, whatever the client asks for.
pub const MAX_RESULTS: usize = 50;

/// The searchable words of `text`: lowercased, split at everything that is not a letter or a
/// digit (so `bob@example.org` is `bob`, `example`, `org`), each cut to [`MAX_WORD_CHARS`].
fn split_words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.chars()
                .take(MAX_WORD_CHARS)
                .collect::<String>()
                .to_lowercase()
        })
}

/// The words a record is found by, without repeats, at most [`MAX_WORDS_PER_RECORD`]: the
/// nickname's first, then the e-mail's, the name's and the location's.
pub fn record_words(info: &UserInfo) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    let fields = [&info.nick_name, &info.email, &info.name, &info.location];
    for w in fields.into_iter().flat_map(|f| split_words(f)) {
        if words.len() == MAX_WORDS_PER_RECORD {
            break;
        }
        if !words.contains(&w) {
            words.push(w);
        }
    }
    words
}

/// A parsed search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The query's words, longest first (the longest narrows the scan most).
    words: Vec<String>,
}

/// Why a search text is not a query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Nothing to look for.
    #[error("give at least one letter or digit to search for")]
    Empty,
    /// More words than a search takes.
    #[error("at most {MAX_QUERY_WORDS} words")]
    TooManyWords,
}

impl Query {
    /// Parses a search text.
    pub fn parse(text: &str) -> Result<Query, QueryError> {
        let mut words: Vec<String> = Vec::new();
        for w in split_words(text) {
            if words.len() == MAX_QUERY_WORDS {
                return Err(QueryError::TooManyWords);
            }
            if !words.contains(&w) {
                words.push(w);
            }
        }
        if words.is_empty() {
            return Err(QueryError::Empty);
        }
        words.sort_by(|a, b| b.chars().count().cmp(&a.chars().count()).then(a.cmp(b)));
        Ok(Query { words })
    }

    /// Whether every word of the query starts a word of `info`.
    pub fn matches(&self, info: &UserInfo) -> bool {
        let have = record_words(info);
        self.words
            .iter()
            .all(|q| have.iter().any(|w| w.starts_with(q.as_str())))
    }
}

/// The index: every record's words, in order.
#[derive(Debug, Default)]
pub struct Directory {
    entries: BTreeSet<(String, UserId)>,
}

impl Directory {
    /// Replaces what `uid` is found by: `old`'s words out, `new`'s in (either may be absent:
    /// a new user, a removed one).
    pub fn replace(&mut self, uid: UserId, old: Option<&UserInfo>, new: Option<&UserInfo>) {
        if let Some(old) = old {
            for w in record_words(old) {
                self.entries.remove(&(w, uid));
            }
        }
        if let Some(new) = new {
            for w in record_words(new) {
                self.entries.insert((w, uid));
            }
        }
    }

    /// Index entries held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The users `query` may match, at most `limit` of them and visiting at most
    /// [`MAX_SCAN`] entries: those with a word that starts with the query's longest word, in
    /// the order of that word (so an exact `bob` comes before `bobby`). `record` gives a
    /// candidate's current record, to check the query's other words against it.
    pub fn search<'a>(
        &self,
        query: &Query,
        limit: usize,
        record: impl Fn(UserId) -> Option<&'a UserInfo>,
    ) -> Vec<UserId> {
        let first = &query.words[0];
        let mut found: Vec<UserId> = Vec::new();
        let start = (first.clone(), UserId(0));
        for (word, uid) in self.entries.range(start..).take(MAX_SCAN) {
            if !word.starts_with(first.as_str()) || found.len() >= limit {
                break;
            }
            if found.contains(uid) {
                continue;
            }
            let matched = query.words.len() == 1 || record(*uid).is_some_and(|r| query.matches(r));
            if matched {
                found.push(*uid);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use gossip_common::crypto::Keypair;

    use super::*;

    fn user(uid: u64, nick: &str, name: &str, email: &str, location: &str) -> UserInfo {
        let mut u = UserInfo::new(UserId(uid), Keypair::generate().public());
        u.nick_name = nick.into();
        u.name = name.into();
        u.email = email.into();
        u.location = location.into();
        u
    }

    struct Fixture {
        dir: Directory,
        users: HashMap<UserId, UserInfo>,
    }

    impl Fixture {
        fn new(users: Vec<UserInfo>) -> Fixture {
            let mut dir = Directory::default();
            for u in &users {
                dir.replace(u.user_id, None, Some(u));
            }
            let users = users.into_iter().map(|u| (u.user_id, u)).collect();
            Fixture { dir, users }
        }

        fn find(&self, text: &str) -> Vec<u64> {
            let q = Query::parse(text).unwrap();
            self.dir
                .search(&q, MAX_RESULTS, |u| self.users.get(&u))
                .into_iter()
                .map(|u| u.0)
                .collect()
        }
    }

    fn people() -> Fixture {
        Fixture::new(vec![
            user(1, "bob", "Robert Smith", "bob@example.org", "Berlin"),
            user(2, "Bobby", "Bobby Tables", "tables@school.example", "Oslo"),
            user(3, "alice", "Alice Liddell", "alice@wonder.land", "Oxford"),
            user(4, "Zoë", "Zoë Müller", "", "Zürich"),
        ])
    }

    #[test]
    fn a_word_prefix_finds_people_case_insensitively_exact_words_first() {
        let f = people();
        assert_eq!(f.find("bob"), vec![1, 2], "bob before bobby");
        assert_eq!(f.find("BOBB"), vec![2]);
        assert_eq!(f.find("smi"), vec![1], "a word of the name");
        assert_eq!(f.find("wonder"), vec![3], "a word of the e-mail");
        assert_eq!(f.find("oxf"), vec![3], "the location");
        assert_eq!(f.find("zoë"), vec![4]);
        assert_eq!(f.find("MÜLLER"), vec![4], "unicode lowercasing");
        assert!(f.find("ob").is_empty(), "inside a word is not a match");
        assert!(f.find("carol").is_empty());
    }

    #[test]
    fn every_word_of_a_query_must_match() {
        let f = people();
        assert_eq!(f.find("bob berlin"), vec![1]);
        assert_eq!(f.find("bob@example.org"), vec![1], "an e-mail is its words");
        assert!(f.find("bob oxford").is_empty());
        assert_eq!(f.find("Tables Bobby"), vec![2], "in any order");
    }

    #[test]
    fn a_changed_record_is_found_by_its_new_words_only() {
        let mut f = people();
        let old = f.users[&UserId(1)].clone();
        let mut new = old.clone();
        new.nick_name = "rob".into();
        new.email = "rob@example.org".into();
        f.dir.replace(UserId(1), Some(&old), Some(&new));
        f.users.insert(UserId(1), new);
        assert_eq!(f.find("bob"), vec![2]);
        assert_eq!(f.find("rob"), vec![1]);
        assert_eq!(f.find("robert"), vec![1], "words both records had stay");
        f.dir
            .replace(UserId(2), Some(&f.users[&UserId(2)].clone()), None);
        assert!(f.find("bobby").is_empty(), "removed");
    }

    #[test]
    fn a_record_adds_a_bounded_number_of_bounded_words() {
        let long_name: String = (0..500).map(|i| format!("w{i} ")).collect();
        let mut u = user(9, &"x".repeat(5_000), &long_name, "", "");
        u.location = "somewhere".into();
        let words = record_words(&u);
        assert_eq!(words.len(), MAX_WORDS_PER_RECORD);
        assert!(words.iter().all(|w| w.chars().count() <= MAX_WORD_CHARS));
        let mut dir = Directory::default();
        dir.replace(UserId(9), None, Some(&u));
        assert_eq!(dir.len(), MAX_WORDS_PER_RECORD);
    }

    #[test]
    fn a_search_visits_a_bounded_part_of_the_index() {
        let users: Vec<UserInfo> = (0..(MAX_SCAN as u64 + 500))
            .map(|i| user(i + 1, &format!("a{i:05}"), "", "", ""))
            .collect();
        let f = Fixture::new(users);
        let q = Query::parse("a").unwrap();
        assert_eq!(f.dir.search(&q, 10, |u| f.users.get(&u)).len(), 10);
        // A two-word query whose second word matches nobody stops after MAX_SCAN entries
        // rather than checking every record.
        let calls = std::cell::Cell::new(0);
        let q = Query::parse("a0 x").unwrap();
        let found = f.dir.search(&q, 10, |u| {
            calls.set(calls.get() + 1);
            f.users.get(&u)
        });
        assert!(found.is_empty());
        assert_eq!(calls.get(), MAX_SCAN);
    }

    #[test]
    fn queries_need_a_word_and_at_most_eight() {
        assert_eq!(Query::parse("  @.-  "), Err(QueryError::Empty));
        assert_eq!(
            Query::parse("a b c d e f g h i"),
            Err(QueryError::TooManyWords)
        );
        let q = Query::parse("ab abcd abc").unwrap();
        assert_eq!(q.words, vec!["abcd", "abc", "ab"], "longest first");
    }
}
