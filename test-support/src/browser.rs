//! A real browser for status-page tests: Debian's `chromium`, headless,
//! printing a page's rendered DOM and taking screenshots.
//!
//! Like promtool, the browser is optional on a developer's machine (tests
//! skip with a notice) and required in CI (`CI=true`), where `.ci/run`
//! installs it. `CHROMIUM` names another binary.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

/// How long one browser run may take.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// A headless Chromium.
#[derive(Debug)]
pub struct Chromium {
    binary: PathBuf,
    profile: tempfile::TempDir,
}

impl Chromium {
    /// The browser, `None` when it is not installed (a notice is printed);
    /// an error when it is not installed and `CI` is set.
    pub fn find() -> Result<Option<Self>> {
        let binary = std::env::var_os("CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("chromium"));
        let found = Command::new(&binary)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            ensure!(
                std::env::var_os("CI").is_none(),
                "chromium is required in CI (apt-get install chromium)"
            );
            println!("chromium not installed: skipping the browser checks (CI installs it)");
            return Ok(None);
        }
        Ok(Some(Self {
            binary,
            profile: tempfile::tempdir()?,
        }))
    }

    fn run(&self, extra: &[&str], url: &str) -> Result<String> {
        let mut child = Command::new(&self.binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .args(extra)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting chromium")?;
        let started = Instant::now();
        while child.try_wait()?.is_none() {
            if started.elapsed() > RUN_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                bail!("chromium did not finish within {RUN_LIMIT:?} for {url}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "chromium failed ({}) for {url}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The DOM of `url` after it loaded, as HTML.
    pub fn dump_dom(&self, url: &str) -> Result<String> {
        self.run(&["--dump-dom"], url)
    }

    /// A screenshot of `url` at `width`×`height` into `file` (PNG).
    pub fn screenshot(&self, url: &str, file: &Path, width: u32, height: u32) -> Result<()> {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(file);
        self.run(
            &[
                &format!("--screenshot={}", file.display()),
                &format!("--window-size={width},{height}"),
            ],
            url,
        )?;
        ensure!(file.exists(), "chromium wrote no screenshot for {url}");
        Ok(())
    }
}

/// Width and height of a PNG, after checking its signature and header.
pub fn png_size(bytes: &[u8]) -> Result<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    ensure!(bytes.starts_with(SIGNATURE), "not a PNG");
    ensure!(
        bytes.len() > 24 && &bytes[12..16] == b"IHDR",
        "PNG without IHDR"
    );
    let be =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    Ok((be(16), be(20)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_headers_are_read() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&1280u32.to_be_bytes());
        png.extend_from_slice(&900u32.to_be_bytes());
        png.extend_from_slice(&[8, 6, 0, 0, 0]);
        assert_eq!(png_size(&png).unwrap(), (1280, 900));
        assert!(png_size(b"GIF89a").is_err());
    }
}
