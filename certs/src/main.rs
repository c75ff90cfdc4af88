//! `telemetry-certs`: make the certificates a telemetry link needs.
//!
//! ```text
//! telemetry-certs init --out DIR [--receiver-name NAME]... [--sender ID]... [--days N] [--force]
//! telemetry-certs issue-sender --ca-dir DIR [--out DIR] [--days N] [--force] ID
//! telemetry-certs inspect FILE
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use telemetry_certs::{files, Authority, Validity};
use telemetry_link::tls::{load_certs, summarize_der};

#[derive(Parser)]
#[command(
    name = "telemetry-certs",
    version,
    about = "Certificates for the telemetry link (mutual TLS)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a CA, a receiver certificate and sender certificates.
    Init {
        /// Directory to write into (created with mode 0700).
        #[arg(long)]
        out: PathBuf,
        /// DNS name or IP address the receiver is reached at (repeatable).
        #[arg(long = "receiver-name", default_values = ["localhost", "127.0.0.1"])]
        receiver_names: Vec<String>,
        /// A sender identity to issue a client certificate for (repeatable).
        #[arg(long = "sender")]
        senders: Vec<String>,
        /// Validity of the receiver and sender certificates, in days. The CA
        /// lives ten times as long (at least ten years).
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a sender certificate from an existing CA.
    IssueSender {
        /// Directory holding ca.pem and ca.key.
        #[arg(long = "ca-dir")]
        ca_dir: PathBuf,
        /// Where to write sender-ID.pem/.key (default: the CA directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
        /// The sender's identity (becomes the `cluster` label).
        id: String,
    },
    /// Print subject, SANs, identity and validity of a certificate file.
    Inspect {
        /// A PEM certificate file.
        file: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Init {
            out,
            receiver_names,
            senders,
            days,
            force,
        } => init(&out, &receiver_names, &senders, days, force),
        Command::IssueSender {
            ca_dir,
            out,
            days,
            force,
            id,
        } => issue_sender(&ca_dir, out.as_deref(), &id, days, force),
        Command::Inspect { file } => inspect(&file),
    }
}

fn init(
    out: &Path,
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
        out.join(files::CA_KEY),
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

    files::create_dir(out)?;
    files::write_file(&out.join(files::CA_KEY), ca.key_pem(), 0o600)?;
    files::write_file(&out.join(files::CA_CERT), ca.cert_pem(), 0o644)?;
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
    println!(
        "  {} {}  (CA; keep ca.key offline if you can)",
        files::CA_CERT,
        files::CA_KEY
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
    Ok(())
}

fn issue_sender(ca_dir: &Path, out: Option<&Path>, id: &str, days: u32, force: bool) -> Result<()> {
    let out = out.unwrap_or(ca_dir);
    let cert = out.join(files::sender_cert(id));
    let key = out.join(files::sender_key(id));
    files::ensure_absent(&[cert.clone(), key.clone()], force)?;
    let ca = files::load_authority(ca_dir)
        .with_context(|| format!("loading the CA from {}", ca_dir.display()))?;
    let issued = ca.issue_sender(id, Validity::days(days))?;
    files::create_dir(out)?;
    files::write_pair(&cert, &key, &issued)?;
    println!(
        "wrote {} and {} (sender identity {id:?})",
        cert.display(),
        key.display()
    );
    Ok(())
}

fn inspect(file: &Path) -> Result<()> {
    let certs = load_certs(file)?;
    for (i, der) in certs.iter().enumerate() {
        let s = summarize_der(der)
            .with_context(|| format!("{}: certificate #{}", file.display(), i + 1))?;
        if certs.len() > 1 {
            println!("certificate #{}", i + 1);
        }
        println!("subject:    {}", s.subject);
        println!("issuer:     {}", s.issuer);
        println!(
            "SANs:       {}",
            if s.sans.is_empty() {
                "-".into()
            } else {
                s.sans.join(", ")
            }
        );
        match &s.identity {
            Ok(id) => println!("identity:   {id}"),
            Err(e) => println!("identity:   none ({e})"),
        }
        println!("not before: {}", s.not_before);
        println!("not after:  {}", s.not_after);
        println!("status:     {}", s.status);
        println!("CA:         {}", if s.is_ca { "yes" } else { "no" });
    }
    Ok(())
}
