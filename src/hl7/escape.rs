//! HL7 escape sequences (standards §2.2), decoded after splitting on delimiters.
//!
//! Ours rather than `hl7_parser::Separators::decode`: that one (0.3.0) slices the text
//! with a character count as a byte index, so a multi-byte character before an escape
//! panics (found by the `hl7_ack` fuzz target), and it drops the delimiters of escapes it
//! does not know. Here unknown and unterminated escapes are kept exactly as written.

use hl7_parser::message::Separators;
use std::borrow::Cow;

pub fn unescape<'a>(value: &'a str, seps: &Separators) -> Cow<'a, str> {
    let esc = seps.escape;
    if !value.contains(esc) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find(esc) {
        out.push_str(&rest[..start]);
        let after = &rest[start + esc.len_utf8()..];
        let Some(end) = after.find(esc) else {
            out.push_str(&rest[start..]);
            return Cow::Owned(out);
        };
        let code = &after[..end];
        match code {
            "F" => out.push(seps.field),
            "S" => out.push(seps.component),
            "T" => out.push(seps.subcomponent),
            "R" => out.push(seps.repetition),
            "E" => out.push(esc),
            ".br" => out.push('\r'),
            c if c.len() >= 3
                && c.starts_with('X')
                && c.len() % 2 == 1
                && c[1..].bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                let bytes: Vec<u8> = (1..c.len())
                    .step_by(2)
                    .filter_map(|i| u8::from_str_radix(&c[i..i + 2], 16).ok())
                    .collect();
                match std::str::from_utf8(&bytes) {
                    Ok(s) => out.push_str(s),
                    // 8-bit values whose meaning the parties agree; Latin-1 is the usual one.
                    Err(_) => out.extend(bytes.iter().map(|&b| b as char)),
                }
            }
            _ => {
                out.push(esc);
                out.push_str(code);
                out.push(esc);
            }
        }
        rest = &after[end + esc.len_utf8()..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_standard_escapes_and_keeps_the_rest() {
        let s = Separators::default();
        let cases = [
            (r"A\F\B\S\C\T\D\R\E\E\F", "A|B^C&D~E\\F"),
            (r"line\X0D0A\next", "line\r\nnext"),
            (r"caf\XC3A9\", "café"),
            (r"\XE9\", "é"),
            (r"\H\bold\N\", r"\H\bold\N\"),
            (r"open \F", r"open \F"),
            (r"brk\.br\x", "brk\rx"),
            ("plain", "plain"),
        ];
        for (input, want) in cases {
            assert_eq!(unescape(input, &s), want, "{input}");
        }
    }

    #[test]
    fn multibyte_text_around_escapes_is_safe() {
        // The input that crashed hl7-parser's decoder.
        let s = Separators::default();
        assert_eq!(unescape("€ x \\F\\ é", &s), "€ x | é");
        assert_eq!(unescape("€€€\\Z€\\", &s), "€€€\\Z€\\");
    }
}
