//! Network delay measurement (the spec's "network delay measurer", used by servers and clients)
//! and the UDP echo responder that answers it on every server's port P+2.
//!
//! A probe packet is the spec's 8-bit sequence number (1 to 255), followed by the sender's
//! identity (`host:port`, UTF-8), `#` and a nonce of 64 random bits as 16 lowercase hex digits;
//! a reply is the packet with a zero byte appended (see [`udp_echo`]). The identity is only used
//! by the lab link emulation, which must know who a reply goes to even on loopback where every
//! node has the same address.
//!
//! A reply counts only when it is exactly a probe still in flight plus the mark (or without it,
//! as a plain echo service answers): its nonce
//! cannot be guessed, so no one can answer a probe before it has arrived. A server (or anyone)
//! can make itself look farther away by answering late, never nearer; only someone who sees the
//! probe on its way (on the path) can answer it early.
//!
//! The prober measures many servers at once over one socket, as the spec's revised design asks:
//! a packet to each live target every `interval`; a target is done after `replies` answers; when
//! all are done (or `dead_after` passes) it waits one more interval for stragglers, then reports
//! the mean RTT of every reply that came back. A target with no reply at all is dead.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

/// Prober settings.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Time between packets to one target (spec: 2 s).
    pub interval: Duration,
    /// Replies after which a target is done (spec: 3).
    pub replies: usize,
    /// No reply within this long means the server is dead (spec: 30 s).
    pub dead_after: Duration,
    /// Address probes are sent from (a server's `--bind` address, so peers and their
    /// blacklists see the same address for its probes as for its links); `None`: any.
    pub source: Option<std::net::IpAddr>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            interval: Duration::from_secs(2),
            replies: 3,
            dead_after: Duration::from_secs(30),
            source: None,
        }
    }
}

/// Lab link emulation: a one-way delay added to everything sent to the named peers. A test and
/// demo feature (kernel netem is not available on our machines); never enable it in production.
#[derive(Debug, Clone, Default)]
pub struct LabDelays {
    by_peer: HashMap<String, Duration>,
}

impl LabDelays {
    /// Delays keyed by peer identity `host:port` (the peer's base port).
    pub fn new(by_peer: HashMap<String, Duration>) -> Self {
        LabDelays { by_peer }
    }

    /// The delay for traffic to `peer` (`host:port`), zero when none is configured.
    pub fn to(&self, peer: &str) -> Duration {
        self.by_peer.get(peer).copied().unwrap_or_default()
    }

    /// Whether any delay is configured.
    pub fn is_empty(&self) -> bool {
        self.by_peer.is_empty()
    }
}

/// Outcome of probing one server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rtt {
    /// Mean round-trip time of the replies received.
    Alive(Duration),
    /// No reply within the dead timeout.
    Dead,
}

impl Rtt {
    /// Milliseconds, or `None` when dead.
    pub fn ms(&self) -> Option<f64> {
        match self {
            Rtt::Alive(d) => Some(d.as_secs_f64() * 1000.0),
            Rtt::Dead => None,
        }
    }
}

/// Sends `packet` to `to`, after `delay` if the lab asks for one (without blocking the caller).
fn send_later(socket: &Arc<UdpSocket>, packet: Vec<u8>, to: SocketAddr, delay: Duration) {
    let socket = Arc::clone(socket);
    if delay.is_zero() && socket.try_send_to(&packet, to).is_ok() {
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = socket.send_to(&packet, to).await;
    });
}

/// Measures the RTT to every target at once. `targets` maps a name (any string, usually the
/// server identity `host:port`) to the target's RTT address (its port P+2). `me` is put in each
/// packet for the lab emulation; `lab` delays what this prober sends.
pub async fn probe(
    targets: &BTreeMap<String, SocketAddr>,
    me: &str,
    cfg: &ProbeConfig,
    lab: &LabDelays,
) -> std::io::Result<BTreeMap<String, Rtt>> {
    struct Target {
        name: String,
        addr: SocketAddr,
        seq: u8,
        /// Probes in flight by sequence number: the exact reply awaited and when it was sent.
        sent: HashMap<u8, (Vec<u8>, Instant)>,
        rtts: Vec<Duration>,
    }
    let bind: SocketAddr = match (cfg.source, targets.values().next()) {
        (Some(ip), _) if !ip.is_unspecified() => SocketAddr::new(ip, 0),
        (_, Some(a)) if a.is_ipv6() => "[::]:0".parse().expect("valid"),
        _ => "0.0.0.0:0".parse().expect("valid"),
    };
    let socket = Arc::new(UdpSocket::bind(bind).await?);
    let mut list: Vec<Target> = targets
        .iter()
        .map(|(name, addr)| Target {
            name: name.clone(),
            addr: *addr,
            seq: 0,
            sent: HashMap::new(),
            rtts: Vec::new(),
        })
        .collect();
    let by_addr: HashMap<SocketAddr, usize> =
        list.iter().enumerate().map(|(i, t)| (t.addr, i)).collect();
    let start = Instant::now();
    let mut ticker = tokio::time::interval(cfg.interval);
    let mut buf = [0u8; 512];
    let mut all_done_at: Option<Instant> = None;
    loop {
        let done = list.iter().all(|t| t.rtts.len() >= cfg.replies);
        if done && all_done_at.is_none() {
            all_done_at = Some(Instant::now());
        }
        // Finish one interval after everyone answered enough, or at the dead timeout.
        let deadline = match all_done_at {
            Some(t) => t + cfg.interval,
            None => start + cfg.dead_after,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = ticker.tick(), if all_done_at.is_none() => {
                for t in list.iter_mut().filter(|t| t.rtts.len() < cfg.replies) {
                    t.seq = next_seq(t.seq);
                    let packet = probe_packet(t.seq, me, rand::random());
                    let mut reply = packet.clone();
                    reply.push(REPLY_MARK);
                    // The clock starts now: a lab delay on the way out is part of the RTT.
                    t.sent.insert(t.seq, (reply, Instant::now()));
                    send_later(&socket, packet, t.addr, lab.to(&t.name));
                }
            }
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                if n == 0 { continue; }
                // Only the exact reply to a probe in flight counts; anything else (a guess at
                // the next probe, a stale or altered reply) is ignored and leaves that probe
                // waiting for its real answer.
                if let Some(&i) = by_addr.get(&from) {
                    let t = &mut list[i];
                    // A plain echo service (RFC 862) answers without the mark: as good.
                    let answer = &buf[..n];
                    let matches = |want: &Vec<u8>| {
                        answer == &want[..] || answer == &want[..want.len() - 1]
                    };
                    if t.sent.get(&buf[0]).is_some_and(|(want, _)| matches(want)) {
                        let (_, sent) = t.sent.remove(&buf[0]).expect("present");
                        t.rtts.push(sent.elapsed());
                    }
                }
            }
        }
    }
    Ok(list
        .into_iter()
        .map(|t| {
            let rtt = if t.rtts.is_empty() {
                Rtt::Dead
            } else {
                Rtt::Alive(t.rtts.iter().sum::<Duration>() / t.rtts.len() as u32)
            };
            (t.name, rtt)
        })
        .collect())
}

/// The sequence number after `seq`: 1 to 255 and round again. Zero is skipped, as the echo
/// responders of earlier versions never answer a packet that holds a zero byte.
fn next_seq(seq: u8) -> u8 {
    seq % 255 + 1
}

/// A probe: `seq`, the sender's identity, `#`, the nonce in hex (never a zero byte, so it can
/// never be taken for a reply).
fn probe_packet(seq: u8, me: &str, nonce: u64) -> Vec<u8> {
    let mut packet = Vec::with_capacity(1 + me.len() + 17);
    packet.push(seq);
    packet.extend_from_slice(me.as_bytes());
    packet.extend_from_slice(format!("#{nonce:016x}").as_bytes());
    packet
}

/// The sender identity in a probe (for the lab emulation): the text after the sequence number,
/// up to the nonce.
fn probe_sender(packet: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(packet.get(1..)?).ok()?;
    Some(text.split('#').next().unwrap_or(text))
}

/// The UDP echo responder for port P+2: returns each packet to its sender. One loop, so it
/// measures the network rather than server load (spec); lab delays apply to replies, keyed by
/// the identity in the packet.
///
/// Every reply is the request plus [`REPLY_MARK`], and a packet ending in the mark is never
/// answered: otherwise one packet with a forged source (one server's echo port, sent to
/// another's) would start an endless echo loop between two servers. Each source (address and
/// port: one prober) gets at most [`ECHO_PER_SOURCE`] replies a second, each source address
/// [`ECHO_PER_IP`], and at most [`ECHO_SOURCES`] sources are tracked per second, so the echo
/// cannot be used to amplify or flood. A source `refused` says yes to (a blacklisted address)
/// gets nothing.
pub async fn udp_echo(
    socket: Arc<UdpSocket>,
    lab: LabDelays,
    refused: impl Fn(std::net::IpAddr) -> bool,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut buf = [0u8; 512];
    let mut limiter = EchoLimiter::default();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) if n > 0 => {
                    let packet = &buf[..n];
                    if packet.last() == Some(&REPLY_MARK)
                        || refused(from.ip())
                        || !limiter.allow(from, Instant::now())
                    {
                        continue;
                    }
                    let delay = if lab.is_empty() {
                        Duration::ZERO
                    } else {
                        probe_sender(packet).map(|who| lab.to(who)).unwrap_or_default()
                    };
                    let mut reply = packet.to_vec();
                    reply.push(REPLY_MARK);
                    send_later(&socket, reply, from, delay);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }
}

/// Appended to every echo reply; never the last byte of a request (which ends in hex digits).
pub const REPLY_MARK: u8 = 0;
/// Echo replies per source (address and port) per second: a prober sends one packet per target
/// per interval (2 s by default, 20 ms in the tests).
pub const ECHO_PER_SOURCE: u32 = 200;
/// Echo replies per source address per second (many probers may share one: a NAT, or every
/// node of a test on loopback).
pub const ECHO_PER_IP: u32 = 5_000;
/// Source addresses answered per second.
pub const ECHO_SOURCES: usize = 10_000;

/// Per-source counts, reset every second.
#[derive(Default)]
struct EchoLimiter {
    window: Option<Instant>,
    sources: HashMap<SocketAddr, u32>,
    ips: HashMap<std::net::IpAddr, u32>,
}

impl EchoLimiter {
    fn allow(&mut self, from: SocketAddr, now: Instant) -> bool {
        if self
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
        {
            self.window = Some(now);
            self.sources.clear();
            self.ips.clear();
        }
        if !self.sources.contains_key(&from) && self.sources.len() >= ECHO_SOURCES {
            return false;
        }
        let ip = self.ips.entry(from.ip()).or_default();
        *ip += 1;
        let source = self.sources.entry(from).or_default();
        *source += 1;
        *source <= ECHO_PER_SOURCE && *ip <= ECHO_PER_IP
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo(lab: LabDelays) -> SocketAddr {
        let s = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = s.local_addr().unwrap();
        tokio::spawn(udp_echo(s, lab, |_| false, std::future::pending()));
        addr
    }

    fn fast() -> ProbeConfig {
        ProbeConfig {
            interval: Duration::from_millis(20),
            replies: 3,
            dead_after: Duration::from_millis(400),
            source: None,
        }
    }

    /// Replies carry the mark and a marked packet is never answered (no echo loop between two
    /// servers from one forged packet); a flood from one source is cut at the per-source rate.
    #[tokio::test]
    async fn replies_are_marked_never_echoed_and_rate_limited() {
        let target = echo(LabDelays::default()).await;
        let me = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 64];
        me.send_to(b"\x07me:1", target).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), me.recv_from(&mut buf))
            .await
            .expect("a reply")
            .unwrap();
        assert_eq!(&buf[..n], b"\x07me:1\x00");
        // A reply sent back (as a forged source would make another echo do) gets no answer.
        me.send_to(&buf[..n], target).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), me.recv_from(&mut buf))
                .await
                .is_err(),
            "a marked packet was echoed"
        );
        // 1,000 packets at once: at most the per-source budget is answered.
        for _ in 0..1000 {
            me.send_to(b"\x01flood", target).await.unwrap();
        }
        let mut replies = 0u32;
        while tokio::time::timeout(Duration::from_millis(300), me.recv_from(&mut buf))
            .await
            .is_ok()
        {
            replies += 1;
        }
        assert!(replies > 0, "nothing answered");
        assert!(replies <= 2 * ECHO_PER_SOURCE, "{replies} replies");
    }

    #[tokio::test]
    async fn measures_several_servers_at_once_and_finds_the_dead() {
        let mut delays = HashMap::new();
        delays.insert("me:1".to_owned(), Duration::from_millis(30));
        let slow = echo(LabDelays::new(delays)).await;
        let fast_addr = echo(LabDelays::default()).await;
        // A bound socket that never answers.
        let mute = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut targets = BTreeMap::new();
        targets.insert("slow".to_owned(), slow);
        targets.insert("fast".to_owned(), fast_addr);
        targets.insert("dead".to_owned(), mute.local_addr().unwrap());
        let t0 = Instant::now();
        let out = probe(&targets, "me:1", &fast(), &LabDelays::default())
            .await
            .unwrap();
        assert_eq!(out["dead"], Rtt::Dead);
        let slow_ms = out["slow"].ms().unwrap();
        let fast_ms = out["fast"].ms().unwrap();
        assert!((30.0..60.0).contains(&slow_ms), "slow {slow_ms} ms");
        assert!(fast_ms < 10.0, "fast {fast_ms} ms");
        // Concurrent: the whole probe took about the dead timeout, not a sum of probes.
        assert!(
            t0.elapsed() < Duration::from_millis(700),
            "{:?}",
            t0.elapsed()
        );
    }

    /// The attack of a member that wants to look near: answer each next probe before it is
    /// due. Without the nonce, a reply to seq+1 sent as soon as seq arrived was taken as the
    /// answer to seq+1, and a server 40 ms away measured at well under 1 ms. Now every guess is
    /// ignored and the server is measured at its real distance.
    #[tokio::test]
    async fn a_reply_sent_before_its_probe_arrived_does_not_count() {
        let fake = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = fake.local_addr().unwrap();
        let responder = Arc::clone(&fake);
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = responder.recv_from(&mut buf).await else {
                    return;
                };
                let probe = buf[..n].to_vec();
                // Guesses at the next probe: the old format, and this one's nonce with the
                // next sequence number.
                let mut old = vec![next_seq(probe[0])];
                old.extend_from_slice(b"me:1");
                old.push(REPLY_MARK);
                let mut same_nonce = probe.clone();
                same_nonce[0] = next_seq(probe[0]);
                same_nonce.push(REPLY_MARK);
                // Sent again and again around the time the next probe is due (every 10 ms),
                // so one lands just after it left.
                let s = Arc::clone(&responder);
                tokio::spawn(async move {
                    for _ in 0..12 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        for guess in [&old, &same_nonce] {
                            let _ = s.send_to(guess, from).await;
                        }
                    }
                });
                // The honest answer, 40 ms late (the real distance).
                let s = Arc::clone(&responder);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    let mut reply = probe;
                    reply.push(REPLY_MARK);
                    let _ = s.send_to(&reply, from).await;
                });
            }
        });
        let mut targets = BTreeMap::new();
        targets.insert("rogue".to_owned(), addr);
        let cfg = ProbeConfig {
            interval: Duration::from_millis(10),
            ..fast()
        };
        let out = probe(&targets, "me:1", &cfg, &LabDelays::default())
            .await
            .unwrap();
        let ms = out["rogue"].ms().expect("measured alive");
        assert!((40.0..80.0).contains(&ms), "measured {ms} ms, really 40 ms");
    }

    #[test]
    fn probes_carry_a_fresh_nonce_and_skip_sequence_zero() {
        assert_eq!(next_seq(255), 1);
        assert_eq!(next_seq(0), 1);
        let a = probe_packet(7, "me:1", 0xdead_beef);
        assert_eq!(&a[..], b"\x07me:1#00000000deadbeef");
        assert!(!a.contains(&REPLY_MARK));
        assert_eq!(probe_sender(&a), Some("me:1"));
        assert_eq!(probe_sender(b"\x07old:2"), Some("old:2"));
    }

    #[tokio::test]
    async fn outgoing_lab_delay_counts() {
        let target = echo(LabDelays::default()).await;
        let mut targets = BTreeMap::new();
        targets.insert("peer:2".to_owned(), target);
        let mut d = HashMap::new();
        d.insert("peer:2".to_owned(), Duration::from_millis(25));
        let out = probe(&targets, "me:1", &fast(), &LabDelays::new(d))
            .await
            .unwrap();
        let ms = out["peer:2"].ms().unwrap();
        assert!((25.0..50.0).contains(&ms), "{ms} ms");
    }
}
