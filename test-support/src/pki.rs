//! A throwaway PKI: a CA plus receiver and sender certificates written to a
//! temporary directory in `telemetry-certs`' layout (CA key under
//! `private/`), an empty CRL that [`TestPki::revoke`] extends, and
//! deliberately bad certificates (expired, not yet valid, from another CA,
//! self-signed, without the right extended key usage).

use std::path::{Path, PathBuf};

use telemetry_certs::{
    crl::{Reason, Revocations},
    files, self_signed_sender, Authority, Issued, Purpose, Validity,
};
use telemetry_link::tls::TlsFiles;
use tempfile::TempDir;

/// A CA in a temporary directory.
#[derive(Debug)]
pub struct TestPki {
    dir: TempDir,
    ca: Authority,
    issued: std::sync::atomic::AtomicU32,
}

impl TestPki {
    /// A fresh CA with an empty CRL.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = Authority::generate("test CA", Validity::days(30))?;
        files::write_authority(&ca, dir.path(), &files::ca_key_dir(dir.path(), None))?;
        files::refresh_crl(&ca, dir.path())?;
        Ok(Self {
            dir,
            ca,
            issued: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join(files::CA_CERT)
    }

    /// The CA's CRL file.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.path().join(files::CRL)
    }

    /// Adds `files`' certificate to the CRL file (a new version, written
    /// atomically).
    pub fn revoke(&self, files: &TlsFiles) -> anyhow::Result<()> {
        files::revoke(
            &self.ca,
            self.dir.path(),
            &files.cert,
            Reason::KeyCompromise,
        )?;
        Ok(())
    }

    /// The CRL's current contents.
    pub fn revocations(&self) -> anyhow::Result<Revocations> {
        Ok(files::read_crl(&self.ca, self.dir.path())?)
    }

    /// Writes a pair under a name no earlier call used (so earlier files
    /// stay valid).
    fn write(&self, stem: &str, issued: &Issued) -> anyhow::Result<TlsFiles> {
        let n = self
            .issued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cert = self.dir.path().join(format!("{stem}-{n}.pem"));
        let key = self.dir.path().join(format!("{stem}-{n}.key"));
        files::write_pair(&cert, &key, issued)?;
        Ok(TlsFiles::new(self.ca_path(), cert, key))
    }

    /// Receiver files valid for `localhost` and `127.0.0.1`.
    pub fn receiver(&self) -> anyhow::Result<TlsFiles> {
        self.receiver_for(&["localhost", "127.0.0.1"])
    }

    /// [`TestPki::receiver`] files that check the CRL ([`TestPki::crl_path`]).
    pub fn receiver_with_crl(&self) -> anyhow::Result<TlsFiles> {
        Ok(self.receiver()?.with_crl(self.crl_path()))
    }

    /// Receiver files valid for `names`.
    pub fn receiver_for(&self, names: &[&str]) -> anyhow::Result<TlsFiles> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let issued = self.ca.issue_receiver(&names, Validity::days(1))?;
        self.write("receiver", &issued)
    }

    /// Sender files for identity `id`.
    pub fn sender(&self, id: &str) -> anyhow::Result<TlsFiles> {
        self.sender_valid(id, Validity::days(1))
    }

    /// Sender files for `id` with an explicit validity window.
    pub fn sender_valid(&self, id: &str, validity: Validity) -> anyhow::Result<TlsFiles> {
        let issued = self.ca.issue_sender(id, validity)?;
        self.write(&format!("sender-{id}"), &issued)
    }

    /// Files for a certificate named `name` (Common Name and DNS SAN, so
    /// also the identity) with exactly the extended key usages `purposes`
    /// (none: no extension at all), from this CA.
    pub fn with_purposes(&self, name: &str, purposes: &[Purpose]) -> anyhow::Result<TlsFiles> {
        let issued = self
            .ca
            .issue_leaf(&[name.to_owned()], purposes, Validity::days(1))?;
        self.write(&format!("purposes-{name}"), &issued)
    }

    /// Sender files for `id` issued by a different CA (the CA file still
    /// points at this PKI's CA, as a misconfigured sender's would).
    pub fn sender_from_other_ca(&self, id: &str) -> anyhow::Result<TlsFiles> {
        let other = Authority::generate("other CA", Validity::days(30))?;
        let issued = other.issue_sender(id, Validity::days(1))?;
        self.write(&format!("foreign-{id}"), &issued)
    }

    /// A self-signed sender certificate for `id`.
    pub fn self_signed(&self, id: &str) -> anyhow::Result<TlsFiles> {
        let issued = self_signed_sender(id)?;
        self.write(&format!("selfsigned-{id}"), &issued)
    }
}
