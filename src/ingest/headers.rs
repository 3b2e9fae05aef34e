//! Request headers and addresses as hookscope stores them: the headers as one JSON
//! object (lower-case names, sorted, repeated values joined, secrets redacted), header
//! values as text, content types, and peer addresses. Written directly, without
//! intermediate maps or formatting machinery: every delivery pays for this.
//!
//! Invariant: the text written is exactly what `serde_json` (JSON) and `Display`
//! (addresses) would write; tests compare them.

use std::net::SocketAddr;

use axum::http::{HeaderMap, HeaderName};

use super::receive::REDACTED;

/// `ip:port`, as `SocketAddr`'s `Display` writes it; IPv4 without the formatting
/// machinery (every delivery pays for this).
pub(super) fn socket_addr_text(addr: SocketAddr) -> String {
    let SocketAddr::V4(v4) = addr else {
        return addr.to_string();
    };
    let mut out = String::with_capacity(21);
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_decimal(&mut out, u32::from(octet));
    }
    out.push(':');
    push_decimal(&mut out, u32::from(v4.port()));
    out
}

fn push_decimal(out: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[i..].iter().map(|&d| char::from(d)));
}

/// A header's value as text (lossy for non-UTF-8 bytes).
pub(crate) fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| match v.to_str() {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
    })
}

/// `application/json`, `text/json` and `application/*+json`.
pub(crate) fn is_json_content_type(ct: &str) -> bool {
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || mime == "text/json" || mime.ends_with("+json")
}

/// The headers as a JSON object (lower-case names, repeated values joined by ", "),
/// with the values of headers for which `redact` is true replaced.
/// Names are sorted; written directly, without an intermediate map (every delivery
/// pays for this).
pub fn headers_json(headers: &HeaderMap, redact: impl Fn(&str) -> bool) -> String {
    let mut names: Vec<&HeaderName> = headers.keys().collect();
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    let mut out = Vec::with_capacity(2 + names.len() * 48);
    out.push(b'{');
    for (i, name) in names.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_string(&mut out, name.as_str());
        out.push(b':');
        if redact(name.as_str()) {
            json_string(&mut out, REDACTED);
            continue;
        }
        let mut values = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()));
        let first = values.next().unwrap_or_default();
        match values.next() {
            None => json_string(&mut out, &first),
            Some(second) => {
                let mut joined = first.into_owned();
                for value in std::iter::once(second).chain(values) {
                    joined.push_str(", ");
                    joined.push_str(&value);
                }
                json_string(&mut out, &joined);
            }
        }
    }
    out.push(b'}');
    // Only JSON text was written, from `str`s: valid UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Appends `s` as a JSON string literal, exactly as `serde_json` writes it.
fn json_string(out: &mut Vec<u8>, s: &str) {
    // Most header names and values need no escape (serde_json escapes only `"`, `\`
    // and control characters); those are copied between quotes.
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing to a Vec cannot fail, and a `str` always serializes.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn json_strings_are_written_as_serde_json_writes_them() {
        for text in [
            "",
            "plain text/html; q=0.9",
            "quote \" and backslash \\",
            "tab\tnewline\n\u{1}",
            "del \u{7f} and é ü 日本",
        ] {
            let mut out = Vec::new();
            json_string(&mut out, text);
            assert_eq!(out, serde_json::to_vec(text).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for text in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.0.12.3:80",
            "127.0.0.1:54321",
            "[::1]:8080",
            "[2001:db8::1]:443",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(socket_addr_text(addr), addr.to_string());
            assert_eq!(socket_addr_text(addr), text);
        }
    }

    #[test]
    fn headers_json_sorts_joins_escapes_and_redacts() {
        let mut map = HeaderMap::new();
        for (k, v) in [
            ("x-b", "2"),
            ("accept", "text/html"),
            ("x-b", "1"),
            ("x-quote", r#"say "hi" \ now"#),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
        ] {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map.append("x-bin", HeaderValue::from_bytes(b"ok\xff").unwrap());
        let json = headers_json(&map, |n| n == "cookie");
        assert_eq!(
            json,
            "{\"accept\":\"text/html\",\"cookie\":\"[redacted]\",\"x-b\":\"2, 1\",\
             \"x-bin\":\"ok\u{fffd}\",\"x-quote\":\"say \\\"hi\\\" \\\\ now\"}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["x-quote"], r#"say "hi" \ now"#);
        assert_eq!(headers_json(&HeaderMap::new(), |_| false), "{}");
    }
}
