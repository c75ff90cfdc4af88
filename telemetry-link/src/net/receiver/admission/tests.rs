use std::net::Ipv4Addr;

use telemetry_test_support::pki::TestPki;

use super::*;
use crate::tls::{Role, TlsFiles};

fn admission(limits: &ReceiverLimits) -> (Admission, prometheus::Registry) {
    crate::tls::install_default_provider();
    let pki = TestPki::new().unwrap();
    let files = pki.receiver().unwrap();
    let files = TlsFiles::new(files.ca, files.cert, files.key);
    let tls = ReloadableTls::load(&files, Role::Receiver).unwrap();
    let registry = prometheus::Registry::new();
    let metrics = ReceiverMetrics::register(&registry).unwrap();
    (
        Admission::new(limits, Arc::new(Mutex::new(tls)), metrics),
        registry,
    )
}

fn arrival(source: Source) -> Arrival {
    Arrival {
        source,
        validated: false,
        may_retry: true,
    }
}

#[test]
fn a_ticket_is_pending_until_its_handshake_is_over_and_releases_it_once() {
    let limits = ReceiverLimits {
        max_pending_handshakes: 4,
        ..ReceiverLimits::default()
    };
    let (admission, _registry) = admission(&limits);
    let source = Source::of(SocketAddr::from((Ipv4Addr::LOCALHOST, 1)));
    let now = Instant::now();
    for _ in 0..2 {
        assert_eq!(
            admission.gate().arrive(arrival(source), now),
            Decision::Admit
        );
    }
    let first = Ticket::new(&admission, source);
    let second = Ticket::new(&admission, source);
    {
        let mut guard = first.pending();
        guard.done();
        guard.done();
    }
    assert_eq!(admission.gate().pending(), 1);
    drop(first);
    assert_eq!(admission.gate().pending(), 1, "released once");
    drop(second.pending());
    drop(second);
    assert_eq!(admission.gate().pending(), 0);
    assert_eq!(admission.gate().sessions(), 0, "no session was opened");
}
