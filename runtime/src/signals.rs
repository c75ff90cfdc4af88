//! Unix signals as events: SIGTERM and SIGINT ask for a graceful stop,
//! SIGHUP asks to re-read certificates, SIGUSR1 asks the sender to move its
//! UDP socket (connection migration, e.g. after an address change).

use tokio::signal::unix::{signal, Signal, SignalKind};

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Stop gracefully (SIGTERM, SIGINT).
    Stop,
    /// Reload TLS material (SIGHUP).
    Reload,
    /// Rebind the UDP socket (SIGUSR1).
    Rebind,
}

/// Signal listeners, installed once at startup.
#[derive(Debug)]
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
}

impl Signals {
    /// Installs the handlers.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }

    /// Waits for the next request.
    pub async fn next(&mut self) -> Request {
        tokio::select! {
            _ = self.term.recv() => Request::Stop,
            _ = self.int.recv() => Request::Stop,
            _ = self.hup.recv() => Request::Reload,
            _ = self.usr1.recv() => Request::Rebind,
        }
    }
}
