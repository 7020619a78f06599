//! The `java.util.Properties` text format, as Kafka reads `server.properties`
//! (`Properties.load(InputStream)`: ISO-8859-1, `\uXXXX` escapes, continuation lines).
//!
//! [`keys`] finds the keys a template sets (and the line each starts on) without changing its
//! text; [`escape_key`] and [`escape_value`] write an entry so that `load` gives back exactly
//! the key and value meant.

/// A key the template sets and the (1-based) line its logical line starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub line: usize,
}

/// A line `load` would refuse (a malformed `\uXXXX`); the message never quotes the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub line: usize,
    pub message: String,
}

/// The keys of `text` in order, as `Properties.load` reads them (a later equal key wins
/// there; here every occurrence is listed).
pub fn keys(text: &str) -> Result<Vec<Entry>, Malformed> {
    let mut out = Vec::new();
    for (line, logical) in logical_lines(text) {
        let key = key_of(&logical).map_err(|message| Malformed { line, message })?;
        out.push(Entry { key, line });
    }
    Ok(out)
}

/// The natural lines of `text` (split at `\n`, `\r` or `\r\n`), each with its 1-based number.
fn natural_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut line = 1;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                out.push((line, &text[start..i]));
                line += 1;
                i += 1;
                start = i;
            }
            b'\r' => {
                out.push((line, &text[start..i]));
                line += 1;
                i += 1;
                if bytes.get(i) == Some(&b'\n') {
                    i += 1;
                }
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < bytes.len() {
        out.push((line, &text[start..]));
    }
    out
}

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{c}')
}

/// Logical lines with comments and blank lines dropped and continuations joined (each
/// continuation's leading whitespace removed), as `Properties.LineReader` does.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, raw) in natural_lines(text) {
        let trimmed = raw.trim_start_matches(is_blank);
        let continues = trailing_backslashes(trimmed) % 2 == 1;
        match current.take() {
            Some((start, mut acc)) => {
                // A continuation is never a comment, even when it starts with # or !.
                if continues {
                    acc.push_str(&trimmed[..trimmed.len() - 1]);
                    current = Some((start, acc));
                } else {
                    acc.push_str(trimmed);
                    out.push((start, acc));
                }
            }
            None => {
                if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('!') {
                    continue;
                }
                if continues {
                    current = Some((n, trimmed[..trimmed.len() - 1].to_string()));
                } else {
                    out.push((n, trimmed.to_string()));
                }
            }
        }
    }
    if let Some(last) = current {
        out.push(last);
    }
    out
}

fn trailing_backslashes(s: &str) -> usize {
    s.bytes().rev().take_while(|&b| b == b'\\').count()
}

/// The key of one logical line: up to the first unescaped `=`, `:` or blank, unescaped.
fn key_of(logical: &str) -> Result<String, String> {
    let mut raw = String::new();
    let mut chars = logical.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                raw.push(c);
                if let Some(next) = chars.next() {
                    raw.push(next);
                }
            }
            '=' | ':' => break,
            c if is_blank(c) => break,
            c => raw.push(c),
        }
    }
    unescape(&raw)
}

/// Undoes `\t \n \r \f \uXXXX` and `\x` (= x), as `Properties.loadConvert` does.
fn unescape(s: &str) -> Result<String, String> {
    let mut units: Vec<u16> = Vec::with_capacity(s.len());
    let mut chars = s.chars();
    let mut buf = [0u16; 2];
    while let Some(c) = chars.next() {
        if c != '\\' {
            units.extend_from_slice(c.encode_utf16(&mut buf));
            continue;
        }
        let Some(e) = chars.next() else { break };
        let plain = match e {
            't' => '\t',
            'n' => '\n',
            'r' => '\r',
            'f' => '\u{c}',
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                let unit = (hex.len() == 4 && hex.chars().all(|h| h.is_ascii_hexdigit()))
                    .then(|| u16::from_str_radix(&hex, 16).ok())
                    .flatten()
                    .ok_or_else(|| "malformed \\uxxxx encoding".to_string())?;
                units.push(unit);
                continue;
            }
            other => other,
        };
        units.extend_from_slice(plain.encode_utf16(&mut buf));
    }
    Ok(String::from_utf16_lossy(&units))
}

fn push_escaped(out: &mut String, c: char, escape_space: bool, is_key: bool) {
    match c {
        ' ' if escape_space => out.push_str("\\ "),
        '\t' => out.push_str("\\t"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\u{c}' => out.push_str("\\f"),
        '\\' => out.push_str("\\\\"),
        '=' | ':' | '#' | '!' if is_key => {
            out.push('\\');
            out.push(c);
        }
        c if (' '..='~').contains(&c) => out.push(c),
        // Everything else as UTF-16 units: `load(InputStream)` reads ISO-8859-1.
        c => {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04X}"));
            }
        }
    }
}

/// A key as `load` reads it back: blanks, `=`, `:`, `#`, `!`, `\` and anything outside
/// printable ASCII escaped.
pub fn escape_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        push_escaped(&mut out, c, true, true);
    }
    out
}

/// A value as `load` reads it back: a leading blank, `\`, control characters and anything
/// outside printable ASCII escaped. `=` and `:` need no escape after the separator, so
/// `listeners=PLAINTEXT://...` stays readable.
pub fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        push_escaped(&mut out, c, i == 0, false);
    }
    out
}

/// One `key=value` line (with its newline).
pub fn line(key: &str, value: &str) -> String {
    format!("{}={}\n", escape_key(key), escape_value(value))
}

/// Text for a comment line: printable ASCII only (a comment is never unescaped, and a line
/// break would end it).
pub fn comment(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    format!("# {clean}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(text: &str) -> Vec<(String, usize)> {
        keys(text)
            .unwrap()
            .into_iter()
            .map(|e| (e.key, e.line))
            .collect()
    }

    #[test]
    fn keys_follow_load() {
        let text = "# c\n! c\n\n  a=1\nb : 2\nc 3\nd\\:e=4\nf\\\n  g=5\r\nh=6\\\n# not a comment\n\\u0062roker.id=7\n";
        assert_eq!(
            k(text),
            vec![
                ("a".into(), 4),
                ("b".into(), 5),
                ("c".into(), 6),
                ("d:e".into(), 7),
                ("fg".into(), 8),
                ("h".into(), 10),
                ("broker.id".into(), 12),
            ]
        );
    }

    #[test]
    fn comment_lines_do_not_continue() {
        assert_eq!(k("# x \\\na=1\n"), vec![("a".into(), 2)]);
    }

    #[test]
    fn even_backslashes_do_not_continue() {
        assert_eq!(k("a=x\\\\\nb=1"), vec![("a".into(), 1), ("b".into(), 2)]);
    }

    #[test]
    fn malformed_unicode_names_the_line() {
        let e = keys("a=1\n\\u00zz=2\n").unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn escapes() {
        assert_eq!(escape_key("a b=c:d#!\\"), "a\\ b\\=c\\:d\\#\\!\\\\");
        assert_eq!(escape_value(" a b=c:d"), "\\ a b=c:d");
        assert_eq!(escape_value("é\u{1F600}\n"), "\\u00E9\\uD83D\\uDE00\\n");
        assert_eq!(k(&line("x:y z", "v")), vec![("x:y z".to_string(), 1)]);
    }
}
