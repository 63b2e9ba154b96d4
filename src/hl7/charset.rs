//! Character sets: MSH-18 decides, with a fallback for the many feeds that leave it
//! empty and still send Windows-1252 bytes (standards §2.3). The raw bytes are always
//! kept unchanged by the caller; this only produces the text we parse.

use encoding_rs::Encoding;
use std::borrow::Cow;

/// The character set a message was decoded with, as recorded with the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charset {
    pub encoding: &'static Encoding,
    /// True when MSH-18 named it; false when we chose it (UTF-8 sniff or fallback).
    pub declared: bool,
}

impl Charset {
    pub fn name(&self) -> &'static str {
        self.encoding.name()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CharsetError {
    #[error("character set '{0}' (MSH-18) cannot be carried over MLLP")]
    Unsupported(String),
    #[error("character set '{0}' (MSH-18) is not known")]
    Unknown(String),
}

/// Maps an MSH-18 value (table 0211) to an encoding. `Ok(None)` means "not declared".
pub fn from_msh18(value: &str) -> Result<Option<&'static Encoding>, CharsetError> {
    let v = value.trim();
    let enc = match v.to_ascii_uppercase().as_str() {
        "" | "ASCII" | "ISO IR6" => return Ok(None),
        "UNICODE UTF-8" | "UTF-8" | "UNICODE" => encoding_rs::UTF_8,
        // WHATWG maps ISO-8859-1 to windows-1252, which only differs in 0x80-0x9F where
        // Latin-1 has control characters no HL7 text should contain.
        "8859/1" | "ISO IR100" => encoding_rs::WINDOWS_1252,
        "8859/2" => encoding_rs::ISO_8859_2,
        "8859/3" => encoding_rs::ISO_8859_3,
        "8859/4" => encoding_rs::ISO_8859_4,
        "8859/5" => encoding_rs::ISO_8859_5,
        "8859/6" => encoding_rs::ISO_8859_6,
        "8859/7" => encoding_rs::ISO_8859_7,
        "8859/8" => encoding_rs::ISO_8859_8,
        "8859/9" => encoding_rs::WINDOWS_1254,
        "8859/15" => encoding_rs::ISO_8859_15,
        "GB 18030-2000" => encoding_rs::GB18030,
        "BIG-5" => encoding_rs::BIG5,
        "KS X 1001" => encoding_rs::EUC_KR,
        "ISO IR14" | "ISO IR87" | "ISO IR159" | "JIS X 0202" => encoding_rs::SHIFT_JIS,
        "UNICODE UTF-16" | "UNICODE UTF-32" => return Err(CharsetError::Unsupported(v.into())),
        _ => return Err(CharsetError::Unknown(v.into())),
    };
    Ok(Some(enc))
}

/// Reads MSH-18 (first repetition) straight from the bytes, before any decoding. Every
/// character set allowed over MLLP is ASCII-compatible in the header, so a byte split works.
pub fn sniff_msh18(raw: &[u8]) -> &[u8] {
    let raw = strip_bom(raw);
    let end = raw
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(raw.len());
    let msh = &raw[..end];
    if msh.len() < 8 || !msh.starts_with(b"MSH") {
        return b"";
    }
    let fs = msh[3];
    let rep = msh[5];
    // token[0] = "MSH", token[1] = MSH-2, so token[17] = MSH-18.
    match msh.split(|&b| b == fs).nth(17) {
        Some(field) => field.split(|&b| b == rep).next().unwrap_or(b""),
        None => b"",
    }
}

pub fn strip_bom(raw: &[u8]) -> &[u8] {
    raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw)
}

/// Decodes a frame. Undeclared bytes are UTF-8 when they are valid UTF-8 (ASCII included),
/// otherwise `fallback`. Malformed sequences become U+FFFD rather than failing: the raw
/// bytes are stored anyway, and the parse is what decides whether the message is usable.
pub fn decode<'a>(
    raw: &'a [u8],
    fallback: &'static Encoding,
) -> Result<(Cow<'a, str>, Charset), CharsetError> {
    let declared = from_msh18(&String::from_utf8_lossy(sniff_msh18(raw)))?;
    let body = strip_bom(raw);
    let charset = match declared {
        Some(encoding) => Charset {
            encoding,
            declared: true,
        },
        None if std::str::from_utf8(body).is_ok() => Charset {
            encoding: encoding_rs::UTF_8,
            declared: false,
        },
        None => Charset {
            encoding: fallback,
            declared: false,
        },
    };
    let (text, _) = charset.encoding.decode_without_bom_handling(body);
    Ok((text, charset))
}

/// Encodes our outbound text (an ACK) in the sender's character set.
pub fn encode(text: &str, charset: Charset) -> Vec<u8> {
    let (bytes, _, _) = charset.encoding.encode(text);
    bytes.into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undeclared_utf8_is_utf8_and_undeclared_latin_falls_back() {
        let utf8 = "MSH|^~\\&|A|B\rPID|||1||MÜLLER".as_bytes();
        let (t, cs) = decode(utf8, encoding_rs::WINDOWS_1252).unwrap();
        assert_eq!(cs.name(), "UTF-8");
        assert!(t.contains("MÜLLER"));

        let cp1252 = b"MSH|^~\\&|A|B\rPID|||1||M\xdcLLER \x93Q\x94";
        let (t, cs) = decode(cp1252, encoding_rs::WINDOWS_1252).unwrap();
        assert_eq!(cs.name(), "windows-1252");
        assert!(!cs.declared);
        assert!(t.contains("MÜLLER \u{201c}Q\u{201d}"));
    }

    #[test]
    fn msh18_is_honoured_and_bom_stripped() {
        let raw = b"\xEF\xBB\xBFMSH|^~\\&|A|B|C|D|20200101||ADT^A01|1|P|2.5||||||8859/1\rPID|||1||J\xe9r\xf4me";
        assert_eq!(sniff_msh18(raw), b"8859/1");
        let (t, cs) = decode(raw, encoding_rs::UTF_8).unwrap();
        assert!(cs.declared);
        assert!(t.starts_with("MSH|"));
        assert!(t.contains("Jérôme"));
    }

    #[test]
    fn table_0211_mapping() {
        let cases: &[(&str, Result<Option<&str>, ()>)] = &[
            ("", Ok(None)),
            ("ASCII", Ok(None)),
            ("UNICODE UTF-8", Ok(Some("UTF-8"))),
            ("8859/1", Ok(Some("windows-1252"))),
            ("8859/15", Ok(Some("ISO-8859-15"))),
            ("UNICODE UTF-16", Err(())),
            ("KLINGON", Err(())),
        ];
        for (v, want) in cases {
            let got = from_msh18(v).map(|e| e.map(|e| e.name())).map_err(|_| ());
            assert_eq!(&got, want, "{v}");
        }
    }

    #[test]
    fn repetitions_of_msh18_use_the_first() {
        let raw = b"MSH|^~\\&|A|B|C|D|20200101||ADT^A01|1|P|2.5||||||UNICODE UTF-8~8859/1\r";
        assert_eq!(sniff_msh18(raw), b"UNICODE UTF-8");
    }
}
