//! Small text helpers every layer shares. It imports nothing from the crate, so any
//! module may use it without creating a cycle.

use anyhow::{anyhow, bail, Result};
use std::path::Path;

/// Untrusted text made safe to print: control characters escaped, length capped.
pub fn printable(input: &str) -> String {
    let mut out = String::new();
    for c in input.chars().take(100) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if input.chars().count() > 100 {
        out.push('…');
    }
    out
}

/// One line: `file:line: message`, without the multi-line snippet toml prints.
pub fn toml_error(label: &str, text: &str, error: &toml::de::Error) -> anyhow::Error {
    let line = error
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    let message = error.message().replace('\n', " ");
    match line {
        Some(line) => anyhow!("{label}:{line}: {message}"),
        None => anyhow!("{label}: {message}"),
    }
}

/// The text of a PEM file of CA certificates given with `flag`, or one line saying why not.
pub fn read_ca_pem(flag: &str, path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow!(
            "{flag} {}: cannot read it ({e}); pass a PEM file of CA certificates",
            path.display()
        )
    })?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        bail!(
            "{flag} {}: no PEM certificate in it; pass a file with -----BEGIN CERTIFICATE----- blocks",
            path.display()
        );
    }
    Ok(text)
}

/// `words` as one shell command line, quoting only what needs it.
pub fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The line of a tool's stderr that says what went wrong, made safe to print.
pub fn error_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let line = lines
        .iter()
        .find_map(|l| l.strip_prefix("Error: "))
        .or(lines.last().copied())
        .unwrap_or("no message");
    let mut out: String = line
        .chars()
        .take(300)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if line.chars().count() > 300 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines() {
        let stderr = b"Using payload\nError: signing: decrypt: encrypted: decryption failed\nmain.go:74: error during command execution\n";
        assert_eq!(
            error_line(stderr),
            "signing: decrypt: encrypted: decryption failed"
        );
    }

    #[test]
    fn shell_words_quote_only_when_needed() {
        let words = ["docker", "a b", "it's"].map(String::from);
        assert_eq!(shell_words(&words), r"docker 'a b' 'it'\''s'");
    }

    #[test]
    fn printable_escapes_control_characters_and_caps_the_length() {
        assert_eq!(printable("red \x1b[31m\n"), "red \\u{1b}[31m\\n");
        let long = "x".repeat(150);
        assert_eq!(printable(&long), format!("{}…", "x".repeat(100)));
    }
}
