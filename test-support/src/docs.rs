//! Documentation kept in step with the binaries: the flags a binary's
//! `--help` lists that a documentation page does not mention.

use std::{path::Path, process::Command};

use anyhow::{ensure, Context, Result};

/// The long flags (`--name`) that `binary --help` lists, in order, without
/// `--help` and `--version`.
pub fn help_flags(binary: &Path) -> Result<Vec<String>> {
    let out = Command::new(binary)
        .arg("--help")
        .output()
        .with_context(|| format!("running {} --help", binary.display()))?;
    ensure!(out.status.success(), "{} --help failed", binary.display());
    let help = String::from_utf8(out.stdout)?;
    Ok(flags_in_help(&help))
}

/// The long flags that open the option lines of a clap `--help` text.
fn flags_in_help(help: &str) -> Vec<String> {
    let mut flags = Vec::new();
    for line in help.lines() {
        let line = line.trim_start();
        if !line.starts_with('-') {
            continue;
        }
        for word in line.split([' ', ',']) {
            let Some(name) = word.strip_prefix("--") else {
                continue;
            };
            let name: String = name
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let flag = format!("--{name}");
            if !name.is_empty() && name != "help" && name != "version" && !flags.contains(&flag) {
                flags.push(flag);
            }
        }
    }
    flags
}

/// The flags of `binary --help` that `page` never names as `` `--flag ``.
pub fn undocumented_flags(binary: &Path, page: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(page).with_context(|| format!("reading {}", page.display()))?;
    let flags = help_flags(binary)?;
    ensure!(
        !flags.is_empty(),
        "{} --help lists no flags",
        binary.display()
    );
    Ok(flags.into_iter().filter(|f| !mentions(&text, f)).collect())
}

/// Whether `text` names `flag` in backticks, alone or followed by a value
/// or a separator (`--flag`, `--flag X`, `--flag`, …), not as a prefix of
/// a longer flag.
fn mentions(text: &str, flag: &str) -> bool {
    let needle = format!("`{flag}");
    text.match_indices(&needle).any(|(at, _)| {
        let next = text[at + needle.len()..].chars().next();
        !matches!(next, Some(c) if c.is_ascii_alphanumeric() || c == '-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_lines_give_their_long_flags() {
        let help = "Usage: x [OPTIONS]\n\nOptions:\n      --listen <LISTEN>\n          QUIC address, see --other in prose\n  -c, --config <CONFIG>\n  -h, --help\n  -V, --version\n";
        assert_eq!(flags_in_help(help), ["--listen", "--config"]);
    }

    #[test]
    fn a_flag_is_not_mentioned_by_a_longer_one() {
        let page = "| `--remote-write-header \"N: v\"` | … | `--listen` |";
        assert!(mentions(page, "--remote-write-header"));
        assert!(mentions(page, "--listen"));
        assert!(!mentions(page, "--remote-write"));
        assert!(!mentions(page, "--list"));
    }
}
