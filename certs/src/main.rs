//! `telemetry-certs`: make, revoke and inspect the certificates a telemetry
//! link needs.
//!
//! ```text
//! telemetry-certs init --out DIR [--ca-key-dir DIR] [--receiver-name NAME]... [--sender ID]... [--days N] [--force]
//! telemetry-certs issue-sender --ca-dir DIR [--ca-key-dir DIR] [--out DIR] [--days N] [--force] ID
//! telemetry-certs revoke --ca-dir DIR [--ca-key-dir DIR] [--reason REASON] CERT_FILE
//! telemetry-certs refresh-crl --ca-dir DIR [--ca-key-dir DIR]
//! telemetry-certs inspect FILE
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use rustls_pki_types::{pem::PemObject, CertificateDer, CertificateRevocationListDer};
use telemetry_certs::{
    crl::{Reason, NEXT_UPDATE_DAYS},
    files, Authority, Validity,
};
use telemetry_link::tls::{format_serial, rfc3339, summarize_crl_der, summarize_der};

const LAYOUT: &str = "\
Layout: --out DIR receives ca.pem, crl.pem, receiver.pem/.key and sender-ID.pem/.key, \
to be copied file by file: the receiver gets ca.pem, crl.pem and receiver.*; each sender \
ca.pem and its own sender-ID.*. The CA key goes to DIR/private/ca.key (directory 0700, \
key 0600) unless --ca-key-dir names another directory, e.g. on removable media. Never copy \
the CA key to a receiver or a sender: whoever holds it can issue and revoke certificates. \
issue-sender, revoke and refresh-crl find the key the same way.";

#[derive(Parser)]
#[command(
    name = "telemetry-certs",
    version,
    about = "Certificates for the telemetry link (mutual TLS)",
    after_help = LAYOUT
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the CA's certificate and key are.
#[derive(clap::Args)]
struct CaArgs {
    /// Directory holding ca.pem (and crl.pem).
    #[arg(long = "ca-dir")]
    ca_dir: PathBuf,
    /// Directory holding the CA key ca.key [default: CA_DIR/private].
    #[arg(long = "ca-key-dir")]
    ca_key_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Create a CA, its (empty) revocation list, a receiver certificate and
    /// sender certificates.
    #[command(after_help = LAYOUT)]
    Init {
        /// Directory to write into (created with mode 0700).
        #[arg(long)]
        out: PathBuf,
        /// Directory for the CA key [default: OUT/private].
        #[arg(long = "ca-key-dir")]
        ca_key_dir: Option<PathBuf>,
        /// DNS name or IP address the receiver is reached at (repeatable).
        #[arg(long = "receiver-name", default_values = ["localhost", "127.0.0.1"])]
        receiver_names: Vec<String>,
        /// A sender identity to issue a client certificate for (repeatable).
        #[arg(long = "sender")]
        senders: Vec<String>,
        /// Validity of the receiver and sender certificates, in days
        /// (1-36500). The CA lives ten times as long (at least ten years).
        #[arg(long, default_value_t = 365, value_parser = parse_days)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a sender certificate from an existing CA.
    IssueSender {
        #[command(flatten)]
        ca: CaArgs,
        /// Where to write sender-ID.pem/.key (default: the CA directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Validity in days (1-36500).
        #[arg(long, default_value_t = 365, value_parser = parse_days)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
        /// The sender's identity (becomes the `cluster` label).
        id: String,
    },
    /// Add a sender certificate to the CA's revocation list CA_DIR/crl.pem
    /// (created if absent). Copy crl.pem to the receiver (--crl): it reloads
    /// it within seconds and refuses that certificate from then on.
    Revoke {
        #[command(flatten)]
        ca: CaArgs,
        /// Why it is revoked.
        #[arg(long, value_enum, default_value_t = ReasonArg::Unspecified)]
        reason: ReasonArg,
        /// The certificate to revoke (PEM, issued by this CA).
        cert: PathBuf,
    },
    /// Sign CA_DIR/crl.pem anew with the same entries and a fresh next
    /// update (an empty list if absent).
    RefreshCrl {
        #[command(flatten)]
        ca: CaArgs,
    },
    /// Print what a certificate or CRL file holds: subject, serial, SANs,
    /// identity, purposes and validity; a CRL's number, dates and entries.
    Inspect {
        /// A PEM file (certificates and/or CRLs).
        file: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ReasonArg {
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
}

impl From<ReasonArg> for Reason {
    fn from(r: ReasonArg) -> Self {
        match r {
            ReasonArg::Unspecified => Reason::Unspecified,
            ReasonArg::KeyCompromise => Reason::KeyCompromise,
            ReasonArg::AffiliationChanged => Reason::AffiliationChanged,
            ReasonArg::Superseded => Reason::Superseded,
            ReasonArg::CessationOfOperation => Reason::CessationOfOperation,
        }
    }
}

fn parse_days(s: &str) -> Result<u32, String> {
    let days: u32 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number of days: {e}"))?;
    match days {
        0 => Err("must be at least 1: a certificate valid for 0 days is already expired".into()),
        1..=36_500 => Ok(days),
        _ => Err("at most 36500 (100 years)".into()),
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Init {
            out,
            ca_key_dir,
            receiver_names,
            senders,
            days,
            force,
        } => {
            let key_dir = files::ca_key_dir(&out, ca_key_dir.as_deref());
            init(&out, &key_dir, &receiver_names, &senders, days, force)
        }
        Command::IssueSender {
            ca,
            out,
            days,
            force,
            id,
        } => issue_sender(&ca, out.as_deref(), &id, days, force),
        Command::Revoke { ca, reason, cert } => revoke(&ca, &cert, reason.into()),
        Command::RefreshCrl { ca } => refresh_crl(&ca),
        Command::Inspect { file } => inspect(&file),
    }
}

fn init(
    out: &Path,
    key_dir: &Path,
    receiver_names: &[String],
    senders: &[String],
    days: u32,
    force: bool,
) -> Result<()> {
    if receiver_names.is_empty() {
        bail!("at least one --receiver-name is required");
    }
    let mut targets = vec![
        out.join(files::CA_CERT),
        key_dir.join(files::CA_KEY),
        out.join(files::CRL),
        out.join(files::RECEIVER_CERT),
        out.join(files::RECEIVER_KEY),
    ];
    for id in senders {
        targets.push(out.join(files::sender_cert(id)));
        targets.push(out.join(files::sender_key(id)));
    }
    files::ensure_absent(&targets, force)?;
    let ca = Authority::generate(
        "telemetry-link CA",
        Validity::days(days.saturating_mul(10).max(3650)),
    )?;
    let receiver = ca
        .issue_receiver(receiver_names, Validity::days(days))
        .context("receiver certificate")?;
    let issued_senders = senders
        .iter()
        .map(|id| {
            ca.issue_sender(id, Validity::days(days))
                .with_context(|| format!("sender {id:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let crl = telemetry_certs::crl::Revocations::new().sign(&ca)?;

    files::write_authority(&ca, out, key_dir)?;
    files::write_file(&out.join(files::CRL), &crl, 0o644)?;
    files::write_pair(
        &out.join(files::RECEIVER_CERT),
        &out.join(files::RECEIVER_KEY),
        &receiver,
    )?;
    for (id, issued) in senders.iter().zip(&issued_senders) {
        files::write_pair(
            &out.join(files::sender_cert(id)),
            &out.join(files::sender_key(id)),
            issued,
        )?;
    }
    println!("wrote to {}:", out.display());
    println!("  {}  (CA {}; every machine)", files::CA_CERT, ca.subject());
    println!(
        "  {}  (revocation list, empty; the receiver's --crl)",
        files::CRL
    );
    println!(
        "  {} {}  (receiver: {})",
        files::RECEIVER_CERT,
        files::RECEIVER_KEY,
        receiver_names.join(", ")
    );
    for id in senders {
        println!(
            "  {} {}  (sender identity {id:?})",
            files::sender_cert(id),
            files::sender_key(id)
        );
    }
    println!(
        "and the CA key to {}  (never copy it to a receiver or sender)",
        key_dir.join(files::CA_KEY).display()
    );
    Ok(())
}

fn load_ca(args: &CaArgs) -> Result<Authority> {
    let loaded = files::load_authority(&args.ca_dir, args.ca_key_dir.as_deref())
        .with_context(|| format!("loading the CA from {}", args.ca_dir.display()))?;
    if loaded.key_beside_certificates {
        eprintln!(
            "warning: the CA key {} lies beside the certificates that are handed out; \
             move it to {} (or use --ca-key-dir)",
            loaded.key_path.display(),
            files::ca_key_dir(&args.ca_dir, None).display()
        );
    }
    Ok(loaded.authority)
}

fn issue_sender(ca: &CaArgs, out: Option<&Path>, id: &str, days: u32, force: bool) -> Result<()> {
    let out = out.unwrap_or(&ca.ca_dir);
    let cert = out.join(files::sender_cert(id));
    let key = out.join(files::sender_key(id));
    files::ensure_absent(&[cert.clone(), key.clone()], force)?;
    let authority = load_ca(ca)?;
    let issued = authority.issue_sender(id, Validity::days(days))?;
    files::create_dir(out)?;
    files::write_pair(&cert, &key, &issued)?;
    println!(
        "wrote {} and {} (sender identity {id:?})",
        cert.display(),
        key.display()
    );
    Ok(())
}

fn revoke(ca: &CaArgs, cert: &Path, reason: Reason) -> Result<()> {
    let authority = load_ca(ca)?;
    let done = files::revoke(&authority, &ca.ca_dir, cert, reason)?;
    let crl = ca.ca_dir.join(files::CRL);
    if done.changed {
        println!(
            "revoked serial {} ({}): {} now lists {} certificate(s), CRL number {}",
            format_serial(&done.serial),
            cert.display(),
            crl.display(),
            done.listed,
            done.number
        );
        println!("copy it to the receiver's --crl file; the receiver reloads it within seconds (or on SIGHUP)");
    } else {
        println!(
            "serial {} ({}) is already revoked; {} unchanged (CRL number {})",
            format_serial(&done.serial),
            cert.display(),
            crl.display(),
            done.number
        );
    }
    Ok(())
}

fn refresh_crl(ca: &CaArgs) -> Result<()> {
    let authority = load_ca(ca)?;
    let list = files::refresh_crl(&authority, &ca.ca_dir)?;
    println!(
        "signed {}: {} certificate(s), CRL number {}, next update in {NEXT_UPDATE_DAYS} days",
        ca.ca_dir.join(files::CRL).display(),
        list.len(),
        list.number()
    );
    Ok(())
}

fn inspect(file: &Path) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: bad PEM", file.display()))?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: bad PEM", file.display()))?;
    if certs.is_empty() && crls.is_empty() {
        bail!("{}: no CERTIFICATE or X509 CRL block found", file.display());
    }
    let numbered = certs.len() + crls.len() > 1;
    for (i, der) in certs.iter().enumerate() {
        if numbered {
            println!("certificate #{}", i + 1);
        }
        print_cert(der).with_context(|| format!("{}: certificate #{}", file.display(), i + 1))?;
    }
    for (i, der) in crls.iter().enumerate() {
        if numbered {
            println!("CRL #{}", i + 1);
        }
        print_crl(der).with_context(|| format!("{}: CRL #{}", file.display(), i + 1))?;
    }
    Ok(())
}

fn or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

fn print_cert(der: &[u8]) -> Result<()> {
    let s = summarize_der(der)?;
    println!("subject:    {}", s.subject);
    println!("issuer:     {}", s.issuer);
    println!("serial:     {}", format_serial(&s.serial));
    println!("SANs:       {}", or_dash(&s.sans));
    match &s.identity {
        Ok(id) => println!("identity:   {id}"),
        Err(e) => println!("identity:   none ({e})"),
    }
    if s.purposes.is_empty() {
        println!("purposes:   none (no extended key usage: the link refuses it)");
    } else {
        println!("purposes:   {}", s.purposes.join(", "));
    }
    println!("not before: {}", s.not_before);
    println!("not after:  {}", s.not_after);
    println!("status:     {}", s.status);
    println!("CA:         {}", if s.is_ca { "yes" } else { "no" });
    Ok(())
}

fn reason_name(code: u8) -> &'static str {
    match code {
        0 => "unspecified",
        1 => "key-compromise",
        2 => "ca-compromise",
        3 => "affiliation-changed",
        4 => "superseded",
        5 => "cessation-of-operation",
        6 => "certificate-hold",
        8 => "remove-from-crl",
        9 => "privilege-withdrawn",
        10 => "aa-compromise",
        _ => "unknown",
    }
}

fn print_crl(der: &[u8]) -> Result<()> {
    let s = summarize_crl_der(der)?;
    println!("CRL issuer:  {}", s.issuer);
    println!(
        "CRL number:  {}",
        s.number.map_or_else(|| "-".into(), |n| n.to_string())
    );
    println!("this update: {}", rfc3339(s.this_update));
    match s.next_update {
        Some(next) if next < telemetry_now() => println!(
            "next update: {} (passed: receivers still apply it; re-sign with refresh-crl)",
            rfc3339(next)
        ),
        Some(next) => println!("next update: {}", rfc3339(next)),
        None => println!("next update: -"),
    }
    println!("revoked:     {}", s.entries.len());
    for e in &s.entries {
        println!(
            "  serial {}  revoked {}  reason {}",
            format_serial(&e.serial),
            rfc3339(e.revoked_at),
            e.reason.map_or("unspecified", reason_name)
        );
    }
    Ok(())
}

fn telemetry_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
