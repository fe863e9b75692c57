//! Benchmark users: deterministic keys, UserIDs and contact graphs, and pre-signed data sets
//! cached on disk.
//!
//! Everything about user `i` is a pure function of `(seed, i)`, so a generator process can log
//! in as users 5,000..9,999 without reading the data set, and a cached data set stays valid
//! across runs. Signing a million users takes a while (two ed25519 signatures and a key
//! derivation each), so data sets are written once as ready-made datafiles and copied into each
//! run's node directory.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use gossip_common::{ContactList, EventCount, Keypair, Signed, UserId, UserInfo};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// A synthetic user population: `users` users, each with `contacts` mutual contacts chosen at
/// random with a fixed seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dataset {
    /// Number of users.
    pub(crate) users: usize,
    /// Contacts per user (mutual: if a lists b, b lists a).
    pub(crate) contacts: usize,
    /// Seed for keys and the contact graph.
    pub(crate) seed: u64,
}

/// First "registration second" of benchmark UserIDs (2025-05-08, seconds since 2000).
const BASE_SECOND: u64 = 800_000_000;

impl Dataset {
    /// UserID of user `i`: the spec's layout, a distinct second each, registered from
    /// 127.0.0.1.
    pub(crate) fn uid(&self, i: usize) -> UserId {
        UserId(((BASE_SECOND + i as u64) << 32) | 0x7f00_0001)
    }

    /// Signing key of user `i`.
    pub(crate) fn key(&self, i: usize) -> Keypair {
        let mut secret = [0u8; 32];
        secret[..8].copy_from_slice(&(i as u64).to_le_bytes());
        secret[8..16].copy_from_slice(&self.seed.to_le_bytes());
        secret[16..].copy_from_slice(b"gossip-bench-key");
        Keypair::from_secret_bytes(&secret)
    }

    /// The contact graph: users are placed on a ring in a random (seeded) order and each lists
    /// its `contacts / 2` neighbours on either side, which makes every relation mutual and
    /// every user's degree exactly `contacts` (when there are enough users).
    pub(crate) fn contact_graph(&self) -> Vec<Vec<usize>> {
        let n = self.users;
        if self.contacts >= n.saturating_sub(1) {
            // Too few users for a ring: everyone lists everyone else.
            return (0..n)
                .map(|u| (0..n).filter(|&c| c != u).collect())
                .collect();
        }
        let mut ring: Vec<usize> = (0..n).collect();
        ring.shuffle(&mut rand::rngs::StdRng::seed_from_u64(self.seed));
        let mut pos = vec![0usize; n];
        for (p, &u) in ring.iter().enumerate() {
            pos[u] = p;
        }
        let half = (self.contacts / 2).min(n.saturating_sub(1) / 2);
        (0..n)
            .map(|u| {
                let mut c = Vec::with_capacity(half * 2);
                for d in 1..=half {
                    c.push(ring[(pos[u] + d) % n]);
                    c.push(ring[(pos[u] + n - d) % n]);
                }
                c.sort_unstable();
                c.dedup();
                c
            })
            .collect()
    }

    /// User `i`'s first record (event count 0, offline).
    pub(crate) fn user_info(&self, i: usize, key: &Keypair) -> UserInfo {
        let mut info = UserInfo::new(self.uid(i), key.public());
        info.nick_name = format!("user{i}");
        info.name = format!("Bench User {i}");
        info.email = format!("user{i}@bench.example.org");
        info.location = "Loopback".into();
        info.website = format!("https://bench.example.org/~user{i}");
        info
    }

    fn cache_name(&self) -> String {
        format!("u{}-k{}-s{}", self.users, self.contacts, self.seed)
    }

    /// Returns a directory holding this data set's datafiles, generating and signing them
    /// first if the cache does not have them (with a progress bar: a million users take
    /// about a minute on two cores).
    pub(crate) fn cached(&self, cache: &Path) -> anyhow::Result<PathBuf> {
        let dir = cache.join(self.cache_name());
        if dir.join("COMPLETE").exists() {
            return Ok(dir);
        }
        let _ = std::fs::remove_dir_all(&dir);
        let tmp = cache.join(format!("{}.partial", self.cache_name()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let graph = self.contact_graph();
        let bar = crate::report::bar(
            self.users as u64,
            &format!("signing {} users (cached for later runs)", self.users),
        );
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = self.users.div_ceil(threads).max(1);
        let parts: Vec<Vec<(Signed<UserInfo>, Signed<ContactList>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.users)
                .step_by(chunk)
                .map(|start| {
                    let (graph, bar) = (&graph, &bar);
                    s.spawn(move || {
                        let end = (start + chunk).min(self.users);
                        (start..end)
                            .map(|i| {
                                let key = self.key(i);
                                let info =
                                    Signed::sign(self.user_info(i, &key), &key).expect("sign user");
                                let contacts = graph[i].iter().map(|&c| self.uid(c)).collect();
                                let list =
                                    ContactList::new(self.uid(i), EventCount::ZERO, contacts);
                                let list = Signed::sign(list, &key).expect("sign list");
                                bar.inc(1);
                                (info, list)
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("signing thread"))
                .collect()
        });
        bar.finish_and_clear();
        let records: Vec<&(Signed<UserInfo>, Signed<ContactList>)> =
            parts.iter().flatten().collect();
        gossip_server::store::write_datafiles(
            &tmp,
            records.iter().map(|(u, _)| u),
            records.iter().map(|(_, l)| l),
        )?;
        std::fs::write(tmp.join("COMPLETE"), format!("{self:?}\n"))?;
        std::fs::rename(&tmp, &dir)?;
        Ok(dir)
    }

    /// Copies the cached datafiles into a fresh node data directory.
    pub(crate) fn install(&self, cache: &Path, data_dir: &Path) -> anyhow::Result<()> {
        let src = self.cached(cache)?;
        std::fs::create_dir_all(data_dir)?;
        for f in ["users.udb", "contacts.cl"] {
            std::fs::copy(src.join(f), data_dir.join(f))
                .with_context(|| format!("copying {f} into {}", data_dir.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_are_mutual_and_of_the_asked_degree() {
        let d = Dataset {
            users: 200,
            contacts: 20,
            seed: 7,
        };
        let g = d.contact_graph();
        for (u, cs) in g.iter().enumerate() {
            assert_eq!(cs.len(), 20, "user {u}");
            assert!(!cs.contains(&u));
            for &c in cs {
                assert!(g[c].contains(&u), "{u} lists {c} but not the reverse");
            }
        }
        assert_eq!(g, d.contact_graph(), "same seed, same graph");
    }
}
