use std::net::Ipv6Addr;

use super::*;

fn limits() -> GateLimits {
    GateLimits {
        max_sessions: 8,
        max_pending: 20,
        max_pending_per_source: 3,
    }
}

fn src(last: u8) -> Source {
    Source::of(SocketAddr::from(([10, 0, 0, last], 4433)))
}

/// A first packet (address not validated, a Retry possible).
fn fresh(source: Source) -> Arrival {
    Arrival {
        source,
        validated: false,
        may_retry: true,
    }
}

/// The same client after answering a Retry.
fn validated(source: Source) -> Arrival {
    Arrival {
        source,
        validated: true,
        may_retry: false,
    }
}

#[test]
fn below_half_the_budget_one_address_may_start_many_handshakes() {
    let mut g = Gate::new(limits());
    let now = Instant::now();
    for _ in 0..10 {
        assert_eq!(g.arrive(fresh(src(1)), now), Decision::Admit);
    }
    assert_eq!(g.pending(), 10);
}

#[test]
fn under_pressure_new_addresses_are_asked_to_retry_then_limited_per_address() {
    let mut g = Gate::new(limits());
    let now = Instant::now();
    for _ in 0..10 {
        assert_eq!(g.arrive(fresh(src(1)), now), Decision::Admit);
    }
    // Half the budget in use: unvalidated handshakes must prove their address.
    assert_eq!(g.arrive(fresh(src(2)), now), Decision::Retry);
    assert_eq!(g.arrive(fresh(src(1)), now), Decision::Retry);
    // Validated: the flooding address is over its share, others are not.
    assert_eq!(
        g.arrive(validated(src(1)), now),
        Decision::Refuse(Refusal::AddressLimit)
    );
    for _ in 0..3 {
        assert_eq!(g.arrive(validated(src(2)), now), Decision::Admit);
    }
    assert_eq!(
        g.arrive(validated(src(2)), now),
        Decision::Refuse(Refusal::AddressLimit)
    );
    assert_eq!(g.arrive(validated(src(3)), now), Decision::Admit);
}

#[test]
fn a_full_budget_asks_for_a_retry_first_and_then_refuses() {
    let mut g = Gate::new(limits());
    let now = Instant::now();
    for i in 0..20 {
        assert_eq!(g.arrive(validated(src(i)), now), Decision::Admit, "{i}");
    }
    assert_eq!(g.arrive(fresh(src(100)), now), Decision::Retry);
    assert_eq!(
        g.arrive(validated(src(100)), now),
        Decision::Refuse(Refusal::HandshakeLimit)
    );
    let no_retry = Arrival {
        source: src(101),
        validated: false,
        may_retry: false,
    };
    assert_eq!(
        g.arrive(no_retry, now),
        Decision::Refuse(Refusal::HandshakeLimit)
    );
    g.handshake_over(src(0));
    assert_eq!(g.arrive(validated(src(100)), now), Decision::Admit);
}

#[test]
fn sessions_and_pending_handshakes_have_separate_budgets() {
    let mut g = Gate::new(limits());
    let now = Instant::now();
    // Authenticated sessions fill their own budget, not the pending one.
    for i in 0..8 {
        assert_eq!(g.arrive(fresh(src(i)), now), Decision::Admit);
        g.handshake_over(src(i));
        g.open_session(src(i), now).unwrap();
    }
    assert_eq!((g.sessions(), g.pending()), (8, 0));
    assert_eq!(
        g.arrive(fresh(src(50)), now),
        Decision::Refuse(Refusal::Busy)
    );
    g.close_session();
    // Many pending handshakes leave the sessions alone, and need no session slot.
    for _ in 0..9 {
        assert_eq!(g.arrive(fresh(src(60)), now), Decision::Admit);
    }
    assert_eq!((g.sessions(), g.pending()), (7, 9));
    g.handshake_over(src(60));
    assert_eq!(g.open_session(src(60), now), Ok(()));
    g.handshake_over(src(60));
    assert_eq!(
        g.open_session(src(60), now),
        Err(Refusal::Busy),
        "authenticated while every slot is taken"
    );
    assert_eq!(g.sessions(), 8);
}

#[test]
fn a_recently_authenticated_address_may_use_half_the_budget_under_pressure() {
    let mut g = Gate::new(limits());
    let now = Instant::now();
    let nat = src(7);
    assert_eq!(g.arrive(fresh(nat), now), Decision::Admit);
    g.handshake_over(nat);
    g.open_session(nat, now).unwrap();
    g.close_session();
    // A flood from elsewhere puts the gate under pressure.
    for _ in 0..10 {
        assert_eq!(g.arrive(fresh(src(1)), now), Decision::Admit);
    }
    for _ in 0..10 {
        assert_eq!(g.arrive(validated(nat), now), Decision::Admit);
    }
    assert_eq!(
        g.arrive(validated(nat), now),
        Decision::Refuse(Refusal::HandshakeLimit)
    );
    for _ in 0..10 {
        g.handshake_over(nat);
    }
    // Half the budget, not more, and only for TRUST_FOR.
    for _ in 0..3 {
        g.arrive(validated(src(2)), now);
    }
    let later = now + TRUST_FOR;
    for _ in 0..3 {
        assert_eq!(g.arrive(validated(nat), later), Decision::Admit);
    }
    assert_eq!(
        g.arrive(validated(nat), later),
        Decision::Refuse(Refusal::AddressLimit)
    );
}

#[test]
fn one_flooding_address_never_locks_out_senders_from_elsewhere() {
    // A flood that answers Retries and never finishes its handshakes,
    // interleaved with legitimate senders from 50 addresses.
    let mut g = Gate::new(GateLimits {
        max_sessions: 1024,
        max_pending: 2048,
        max_pending_per_source: 32,
    });
    let now = Instant::now();
    let attacker = src(250);
    let mut held = 0;
    for round in 0..5000 {
        for a in [fresh(attacker), validated(attacker)] {
            if g.arrive(a, now) == Decision::Admit {
                held += 1;
            }
        }
        let legit = src((round % 50) as u8);
        let decision = match g.arrive(fresh(legit), now) {
            Decision::Retry => g.arrive(validated(legit), now),
            d => d,
        };
        assert_eq!(decision, Decision::Admit, "round {round}");
        g.handshake_over(legit);
    }
    assert_eq!(held, 1024, "the flood holds half the budget, no more");
}

#[test]
fn sources_group_ipv6_by_64_and_unmap_ipv4() {
    let a = Source::of(SocketAddr::from((
        "2001:db8:1:2:aaaa::1".parse::<Ipv6Addr>().unwrap(),
        1,
    )));
    let b = Source::of(SocketAddr::from((
        "2001:db8:1:2:bbbb::9".parse::<Ipv6Addr>().unwrap(),
        2,
    )));
    let c = Source::of(SocketAddr::from((
        "2001:db8:1:3::1".parse::<Ipv6Addr>().unwrap(),
        1,
    )));
    assert_eq!(a, b);
    assert_ne!(a, c);
    let mapped = Source::of(SocketAddr::from((
        "::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap(),
        1,
    )));
    assert_eq!(mapped, src(1));
}

#[test]
fn pending_counts_by_source_go_when_their_handshakes_end() {
    let mut g = Gate::new(limits());
    let now = Instant::now();
    for i in 0..5 {
        g.arrive(fresh(src(i)), now);
    }
    for i in 0..5 {
        g.handshake_over(src(i));
    }
    assert_eq!(g.pending(), 0);
    assert!(g.pending_by_source.is_empty());
}

#[test]
fn trusted_sources_are_bounded_and_the_oldest_goes_first() {
    let mut g = Gate::new(limits());
    let t0 = Instant::now();
    for i in 0..(MAX_TRUSTED_SOURCES as u32 + 10) {
        let s = Source::of(SocketAddr::from((i.to_be_bytes(), 1)));
        g.trust(s, t0 + Duration::from_millis(u64::from(i)));
    }
    assert_eq!(g.trusted.len(), MAX_TRUSTED_SOURCES);
    let first = Source::of(SocketAddr::from((0u32.to_be_bytes(), 1)));
    let last = Source::of(SocketAddr::from((
        (MAX_TRUSTED_SOURCES as u32 + 9).to_be_bytes(),
        1,
    )));
    assert!(!g.trusted.contains_key(&first));
    assert!(g.trusted.contains_key(&last));
}
