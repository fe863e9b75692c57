use super::*;

pub(crate) fn k(n: u16) -> ServerId {
    ("h".into(), n)
}

pub(crate) fn row(seq: u64, cells: &[(u16, Option<u64>)]) -> Row {
    Row {
        seq,
        rtts: cells.iter().map(|(n, v)| (k(*n), *v)).collect(),
        sig: None,
    }
}

#[test]
fn an_edge_is_dead_if_either_direction_says_so_and_weighs_its_worse_direction() {
    let (a, b) = (row(1, &[(2, Some(10))]), row(1, &[(1, Some(30))]));
    assert_eq!(edge(Some(&a), &k(2), Some(&b), &k(1)), Edge::Alive(30));
    assert_eq!(edge(Some(&a), &k(2), None, &k(1)), Edge::Alive(10));
    let b_dead = row(1, &[(1, None)]);
    assert_eq!(edge(Some(&a), &k(2), Some(&b_dead), &k(1)), Edge::Dead);
    assert_eq!(edge(None, &k(2), None, &k(1)), Edge::Unknown);
}

#[test]
fn damping_keeps_small_moves_and_passes_every_death_and_revival() {
    assert!(damped(Some(&Some(10_000)), Some(11_000)));
    assert!(!damped(Some(&Some(10_000)), Some(13_000)));
    // Sub-millisecond noise on loopback is kept out by the floor.
    assert!(damped(Some(&Some(100)), Some(900)));
    assert!(!damped(Some(&Some(100)), None));
    assert!(!damped(Some(&None), Some(100)));
    assert!(damped(Some(&None), None));
    assert!(!damped(None, None));
}

#[test]
fn only_newer_rows_are_stored_and_they_teach_the_servers_they_name() {
    let mut m = Membership::new(k(1), &[k(2)]);
    assert!(m.store_row(k(2), row(10, &[(1, Some(5)), (3, Some(7))])));
    assert!(m.knows(&k(3)), "a server named in a row is learned");
    assert!(!m.store_row(k(2), row(10, &[(1, None)])), "same seq");
    assert!(!m.store_row(k(2), row(9, &[(1, None)])), "older seq");
    assert_eq!(m.row(&k(2)).unwrap().seq, 10);
    // This server's own row, echoed back, is never news to flood (before this server has
    // measured anything it is adopted, so its tree matches everyone else's).
    assert!(!m.store_row(k(1), row(99, &[])));
    assert_eq!(m.my_row().map(|r| r.seq), Some(99));
    // A tombstone keeps a deleted server out of rows and lists.
    assert!(m.remove_server(&k(3)));
    assert!(!m.store_row(k(3), row(11, &[])));
    assert!(m.add_servers([k(3)]).is_empty());
    assert!(m.store_row(k(4), row(1, &[(3, Some(1))])));
    assert!(!m.knows(&k(3)), "not re-learned from a row");
    m.undelete(&k(3));
    assert_eq!(m.add_servers([k(3)]), vec![k(3)]);
}

#[test]
fn own_measurements_publish_only_real_changes_with_increasing_seq() {
    let mut m = Membership::new(k(1), &[k(2), k(3)]);
    let first = m
        .apply_measurements(&[(k(2), Some(10_000)), (k(3), None)], 1_000)
        .expect("first row");
    assert_eq!(first.seq, 1_000);
    assert_eq!(m.dead_in_my_row(), vec![k(3)]);
    assert_eq!(m.to_measure(), vec![k(2)]);
    // Jitter: nothing to publish.
    assert!(m
        .apply_measurements(&[(k(2), Some(10_500))], 2_000)
        .is_none());
    // A revival is always news, even with a clock that went backwards.
    let v = m.version();
    assert!(m
        .apply_measurements(&[(k(2), Some(10_400))], 2_500)
        .is_none());
    assert_eq!(m.version(), v, "nothing published, nothing to recompute");
    let next = m.apply_measurements(&[(k(3), Some(300))], 500).unwrap();
    assert!(m.version() > v);
    assert_eq!(next.seq, 1_001);
    assert!(m.dead_in_my_row().is_empty());
}

#[test]
fn after_a_restart_our_rows_go_past_the_ones_we_published_before() {
    // Before the restart this server published seq 5,000; its clock now says 1,000.
    let mut m = Membership::new(k(1), &[k(2)]);
    let first = m
        .apply_measurements(&[(k(2), Some(10_000))], 1_000)
        .unwrap();
    assert_eq!(first.seq, 1_000);
    assert!(
        !m.store_row(k(1), row(5_000, &[(2, Some(10_000))])),
        "never stored"
    );
    // The next round republishes past it even though nothing changed.
    let again = m
        .apply_measurements(&[(k(2), Some(10_000))], 1_001)
        .unwrap();
    assert_eq!(again.seq, 5_001);
    assert!(m
        .apply_measurements(&[(k(2), Some(10_000))], 1_002)
        .is_none());
}

#[test]
fn the_graph_has_an_edge_for_each_pair_the_rows_call_alive() {
    let mut m = Membership::new(k(1), &[k(2), k(3)]);
    m.apply_measurements(&[(k(2), Some(10)), (k(3), Some(20))], 1);
    m.store_row(k(2), row(1, &[(1, Some(15)), (3, None)]));
    let g = m.graph();
    let tree = crate::mst::minimum_spanning_tree(&g);
    assert_eq!(tree.len(), 2, "{tree:?}");
    assert!(tree.contains(&(k(1), k(2))) && tree.contains(&(k(1), k(3))));
    assert_eq!(m.edge_to(&k(2)), Edge::Alive(15));
    assert!(m.both_measured(&k(2)) && !m.both_measured(&k(3)));
}

#[test]
fn servers_only_named_by_others_are_forgotten_unless_they_show_up() {
    let mut m = Membership::new(k(0), &[k(1)]);
    m.add_servers([k(2), k(3), k(4)]);
    let t = tokio::time::Instant::now();
    let age = std::time::Duration::from_secs(600);
    assert!(m.expire_unproven(t, age).is_empty());
    // k(2) publishes a row, k(3) answers our probe; k(4) never shows up.
    assert!(m.store_row(k(2), row(5, &[(0, Some(100))])));
    m.apply_measurements(&[(k(3), Some(200)), (k(4), None)], 1);
    assert_eq!(m.expire_unproven(t + age, age), vec![k(4)]);
    assert!(!m.knows(&k(4)));
    // The config's peer is proven by the admin who named it, even if silent.
    assert!(m.knows(&k(1)) && m.knows(&k(2)) && m.knows(&k(3)));
}

#[test]
fn rows_round_trip_through_update_rtts() {
    let r = row(
        42,
        &[
            (2, Some(1500)),
            (3, None),
            (4, Some(1)),
            (5, Some(123_456_789)),
        ],
    );
    let (who, back) = row_of(&row_message(&k(1), &r, None));
    // The signed bytes survive the wire's milliseconds, so a forwarded row still verifies.
    assert_eq!(row_bytes(&who, &back), row_bytes(&k(1), &r));
    assert_eq!((who, back), (k(1), r));
}

#[test]
fn no_peer_can_grow_the_server_list_or_the_rows_without_bound() {
    let mut m = Membership::new(k(0), &[]);
    let many = (1..=MAX_SERVERS as u16 + 50).map(|i| ("x".to_owned(), i));
    let added = m.add_servers(many);
    assert_eq!(m.servers().len(), MAX_SERVERS);
    assert_eq!(added.len(), MAX_SERVERS - 1);
    assert!(m.is_full());
    // A row of a server not yet known cannot make room for itself.
    assert!(!m.store_row(("y".into(), 1), row(1, &[])));
    // An oversized row is refused whole.
    let mut huge = Row {
        seq: 5,
        ..Row::default()
    };
    for i in 0..=MAX_SERVERS as u16 {
        huge.rtts.insert(("z".into(), i), Some(1));
    }
    assert!(!m.store_row(("x".into(), 1), huge));
}

#[test]
fn one_key_introduces_a_handful_of_unproven_servers_and_gets_places_back_as_they_show() {
    use super::introduced::MAX_INTRODUCED;
    let name = |n: &str| (n.to_owned(), 7000u16);
    let mut m = Membership::new(name("me"), &[]);
    let stranger = gossip_common::Keypair::generate().public();
    let honest = gossip_common::Keypair::generate().public();
    let junk: Vec<ServerId> = (0..300).map(|i| name(&format!("junk{i}"))).collect();
    let (added, refused) = m.add_introduced(junk.clone(), &stranger);
    assert_eq!(
        (added.len(), refused),
        (MAX_INTRODUCED, 300 - MAX_INTRODUCED)
    );
    assert_eq!(m.servers().len(), 1 + MAX_INTRODUCED);
    // Another key is not held to the stranger's count; names known already cost nothing.
    let (added, refused) = m.add_introduced([junk[0].clone(), name("real")], &honest);
    assert_eq!((added, refused), (vec![name("real")], 0));
    // A name that shows it exists frees its introducer's place.
    m.prove(&junk[0]);
    assert_eq!(m.introduced_by(&stranger), MAX_INTRODUCED - 1);
    let (added, _) = m.add_introduced([name("one-more")], &stranger);
    assert_eq!(added, vec![name("one-more")]);
    // So does one that is forgotten.
    let now = tokio::time::Instant::now();
    m.expire_unproven(now, std::time::Duration::from_secs(600));
    let gone = m.expire_unproven(
        now + std::time::Duration::from_secs(601),
        std::time::Duration::from_secs(600),
    );
    // Every unproven name but the proven one: the stranger's 16 and the honest key's one.
    assert_eq!(gone.len(), MAX_INTRODUCED + 1);
    assert_eq!(m.introduced_by(&stranger), 0);
}
